"""equimol: E(3)-equivariant graph neural networks for atoms and molecules."""

__version__ = "0.1.0"
