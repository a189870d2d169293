"""Studies that produce tables and figures: the invariance study (``equimol study invariance``).

The VAE study lives in :mod:`equimol.studies.vae_study`.
"""

from equimol.studies.invariance import (
    TEST_SETS,
    InvarianceStudyConfig,
    InvarianceStudyResult,
    load_config,
    markdown_tables,
    run_invariance_study,
    write_results,
)

__all__ = [
    "TEST_SETS",
    "InvarianceStudyConfig",
    "InvarianceStudyResult",
    "load_config",
    "markdown_tables",
    "run_invariance_study",
    "write_results",
]
