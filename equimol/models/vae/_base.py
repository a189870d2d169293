"""The interface shared by equimol's configuration VAEs.

A configuration is a fixed number ``N`` of identical particles in a box ``[0, L]^dim``:
``pos [B, N, 3]`` Å, with ``z = 0`` when ``dim = 2``. Each VAE owns its representation of a
configuration (sorted coordinates, a distance matrix, an occupancy grid, invariant features):

- :meth:`ConfigurationVAE.represent` turns positions into the encoder's input,
- :meth:`ConfigurationVAE.target` into what the decoder reconstructs (often the same),
- :meth:`ConfigurationVAE.reconstruction_loss` scores a reconstruction per configuration,
- :meth:`ConfigurationVAE.to_positions` turns a decoder output back into positions, so decoded
  and generated configurations can be checked physically whatever the representation.

The rest -- ``encode``, ``reparameterise``, ``decode``, ``forward`` and the ELBO -- is shared.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConfigurationVAE", "gaussian_kl", "gaussian_nll"]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` summed over latent dimensions: [B, k] -> [B] (nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_nll(recon: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """Negative log-likelihood, up to a constant, of ``target`` under ``N(recon, sigma^2)``
    for every entry, summed over the last dimension: [B, F] -> [B]."""
    return ((recon - target) ** 2).sum(-1) / (2 * sigma**2)


class ConfigurationVAE(nn.Module):
    """Base class: a VAE of configurations of ``n_atoms`` particles in a box of side ``box_length``.

    Args:
        n_atoms: N, the (fixed) number of particles.
        box_length: L, the box side (Å); positions lie in ``[0, L]^dim``.
        dim: 2 (positions in the plane z = 0) or 3.
        latent_dim: size of the latent vector.

    Two class attributes say how a decoded configuration relates to the input, for the
    analyses: ``ordered_output`` (decoded atom ``i`` corresponds to atom ``i`` of
    :meth:`canonical_positions`) and ``absolute_frame`` (decoded positions are in the box
    frame, not only up to a rigid motion).

    Subclasses build ``self.encoder`` (representation -> ``2 * latent_dim`` numbers, split into
    ``mu`` and ``logvar``) and implement :meth:`represent`, :meth:`decode`,
    :meth:`reconstruction_loss` and :meth:`to_positions`.
    """

    ordered_output: bool = False
    absolute_frame: bool = False

    def __init__(self, n_atoms: int, box_length: float, dim: int = 2, latent_dim: int = 8) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"{type(self).__name__}: dim must be 2 or 3, got {dim}")
        if n_atoms < 2:
            raise ValueError(f"{type(self).__name__}: n_atoms must be >= 2, got {n_atoms}")
        if box_length <= 0:
            raise ValueError(f"{type(self).__name__}: box_length must be > 0, got {box_length}")
        self.n_atoms = int(n_atoms)
        self.box_length = float(box_length)
        self.dim = int(dim)
        self.latent_dim = int(latent_dim)

    # ----------------------------------------------------------------- representation
    def check_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """Validate ``pos [B, N, 3]`` and return its first ``dim`` columns, [B, N, dim]."""
        if pos.ndim != 3 or pos.shape[-1] != 3 or pos.shape[1] != self.n_atoms:
            raise ValueError(
                f"{type(self).__name__}: expected positions [B, {self.n_atoms}, 3], "
                f"got {tuple(pos.shape)}"
            )
        return pos[..., : self.dim]

    def canonical_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """``pos [B, N, 3]`` with the atoms in the order the decoder reproduces them
        (only for models with ``ordered_output``)."""
        raise NotImplementedError(f"{type(self).__name__} does not decode atoms in a fixed order")

    @staticmethod
    def _atoms_sorted_by(pos: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """``pos [B, N, 3]`` with the atoms of each configuration in ascending order of ``key [B, N]``."""
        idx = torch.argsort(key, dim=-1)
        return torch.gather(pos, 1, idx.unsqueeze(-1).expand_as(pos))

    def represent(self, pos: torch.Tensor) -> torch.Tensor:
        """The encoder's input for positions ``pos [B, N, 3]`` Å."""
        raise NotImplementedError

    def target(self, pos: torch.Tensor) -> torch.Tensor:
        """What the decoder should reproduce for ``pos [B, N, 3]``; by default the representation."""
        return self.represent(pos)

    def reconstruction_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (up to a constant) of ``target`` under ``recon``: [B]."""
        raise NotImplementedError

    def to_positions(self, recon: torch.Tensor) -> torch.Tensor:
        """Positions [B, N, 3] Å described by a decoder output (the box frame where known)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- the VAE
    def encode(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu [B, k], logvar [B, k])`` of the approximate posterior for ``pos [B, N, 3]``."""
        h = self.encoder(self.represent(pos))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def reparameterise(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A sample ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, 1)`` (seeded by ``generator``)."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (in the model's representation) for latent vectors ``z [B, k]``."""
        raise NotImplementedError

    def forward(
        self, pos: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"recon", "mu", "logvar", "z"}`` for ``pos [B, N, 3]``; ``z`` is a posterior sample
        in training mode and ``mu`` in eval mode."""
        mu, logvar = self.encode(pos)
        z = self.reparameterise(mu, logvar, generator) if self.training else mu
        return {"recon": self.decode(z), "mu": mu, "logvar": logvar, "z": z}

    def elbo(
        self,
        pos: torch.Tensor,
        beta: float = 1.0,
        generator: torch.Generator | None = None,
        reduce: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The beta-weighted negative ELBO of ``pos [B, N, 3]``.

        Returns ``{"loss", "reconstruction", "kl"}`` with ``loss = reconstruction + beta * kl``,
        means over the batch (scalars) when ``reduce``, per configuration ([B]) otherwise.
        The posterior is sampled with ``generator`` in training mode and replaced by its mean in
        eval mode (a deterministic score).
        """
        out = self(pos, generator=generator)
        rec = self.reconstruction_loss(out["recon"], self.target(pos))
        kl = gaussian_kl(out["mu"], out["logvar"])
        loss = rec + beta * kl
        if reduce:
            return {"loss": loss.mean(), "reconstruction": rec.mean(), "kl": kl.mean()}
        return {"loss": loss, "reconstruction": rec, "kl": kl}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` configurations [n, N, 3] Å decoded from the prior ``z ~ N(0, 1)``."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=p.dtype, device=p.device)
        return self.to_positions(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions [B, N, 3] Å decoded from the posterior means of ``pos [B, N, 3]``."""
        mu, _ = self.encode(pos)
        return self.to_positions(self.decode(mu))

    def _pad3(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, dim] -> [B, N, 3] with zeros in the unused columns."""
        if x.shape[-1] == 3:
            return x
        return torch.cat([x, x.new_zeros(*x.shape[:-1], 3 - x.shape[-1])], dim=-1)
