"""TransIP (family ``"transip"``): a plain Transformer over atoms that learns equivariance from a loss.

Tokens are atoms. Each token is a vector of ``D = channels + 3 * vector_channels`` numbers whose columns carry
*declared* irreps: ``channels x 0e`` scalars, then ``vector_channels x 1o`` Cartesian vectors (channel-major,
``(x, y, z)`` order = the ``l = 1`` block of our real harmonics, where ``D_1(R) = R``). Nothing in the
network respects that declaration by construction; the alignment loss of :meth:`TransIPPotential.regularizers`
teaches it (see :mod:`mlip_cli.models.soft_equivariance`). With ``equivariance: learned`` nothing is declared:
a learned transformation network and a contrastive loss on each structure's pooled final embedding let the model
find how its latents rotate (see :mod:`mlip_cli.models.learned_transform`), beside rotation augmentation.

Layer (pre-norm, residual)::

    y = RMSNorm(x);  q, k, v = split(W y)                                  # plain linear maps over all D columns
    e_ij = W_e [radial_mlp(bessel(r_ij)), r_ij / |r_ij|]                    # raw direction components: not equivariant
    logit_ij = q_i . (k_j + K e_ij) / sqrt(d) + b(radial_ij)                # one logit per head
    a_ij = u(r_ij) exp(logit_ij) / (exp(logit_ii) + sum_k u(r_ik) exp(logit_ik))   # sparse softmax + self token
    x_i += W_o (a_ii v_i + sum_j a_ij (v_j + V e_ij))   +   [0, sum_j a_ij g(v_j + V e_ij) Y1(r_ij)]
    x += FFN(RMSNorm(x))

Attention runs over the edge list (receivers ``edge_index[1]``), so cost is linear in the number of neighbours.
The envelope ``u`` multiplies each neighbour's softmax weight in numerator and denominator, and the self token
keeps the denominator positive, so energy and forces are continuous when an edge crosses the cutoff. The last
term writes geometric vectors into the vector columns (``Y1 = sqrt(3) r_hat``), one head per vector channel.
Per-atom energy: ``MLP(RMSNorm(scalars of the last layer))``.

Frame averaging (``config.frame_averaging``): the energy is averaged over a set of frames per structure that
rotates with it (:func:`~mlip_cli.models.soft_equivariance.averaging_frames`): the 8 signed principal axes of
the envelope-weighted edge-vector covariance, or, where two or three of its eigenvalues coincide (benzene,
CH4, SF6, cubic crystals), frames built from the structure's shortest edges (24 to a few hundred). That makes
the energy exactly invariant to rotations and reflections, symmetric structures included; forces and stress
stay autograd derivatives. It costs 8 forward passes (batched), more for a degenerate structure, whose frames
each evaluate only that structure. :meth:`Potential.forward` passes each atom's structure (``node_graph``) to
:meth:`TransIPPotential.interaction_energies`. It only reads ``config``, so a model trained without it can be
evaluated with it (``model.config.frame_averaging = True``). Under symbolic tracing (``mlip export``) the
degenerate case cannot be detected and the principal axes are used everywhere: the exported program is exact
on structures with distinct eigenvalues only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch._subclasses import FakeTensor

from mlip_datasets.graph import edge_vectors
from mlip_kernels.scatter import scatter_sum
from mlip_kernels.sh import spherical_harmonics

from ..nn import BesselBasis, ElementEmbedding, PolynomialEnvelope, ScalarReadout
from .config import ConfigError, ModelConfig
from .equivariant import estimate_parameters_guard
from .hooks import TrainingHooks
from .learned_transform import LatentTransform, contrastive_loss
from .potential import Potential
from .registry import register_model
from .soft_equivariance import FRAME_SIGNS, Irreps, alignment_loss, averaging_frames, rotate_embeddings
from .symmetry import ROTATION, SYMMETRY_TYPES, draw, transform_batch

__all__ = ["TransIPPotential", "TransIPBlock", "TransIPConfig", "EQUIVARIANCE_MODES"]

#: How training teaches equivariance (``TransIPConfig.equivariance``).
EQUIVARIANCE_MODES = ("alignment", "learned")


class _Edges(NamedTuple):
    src: torch.Tensor  # [E] senders
    dst: torch.Tensor  # [E] receivers
    radial: torch.Tensor  # [E, radial_dim] invariant radial features
    feat: torch.Tensor  # [E, channels] radial + raw direction features
    envelope: torch.Tensor  # [E]
    y1: torch.Tensor  # [E, 3] sqrt(3) * unit vector


def _edge_softmax(
    self_logit: torch.Tensor, logit: torch.Tensor, envelope: torch.Tensor, dst: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax per receiver over its own token and its neighbours, neighbour weights scaled by the envelope.

    Shapes:
        self_logit ``[N, H]``, logit ``[E, H]``, envelope ``[E]``, dst ``[E]`` -> ``[N, H]``, ``[E, H]``.
    """
    # Subtract each receiver's largest logit (a constant per row: the result does not depend on it).
    live = torch.where(envelope[:, None] > 0, logit, torch.full_like(logit, -torch.inf)).detach()
    m = self_logit.detach().scatter_reduce(0, dst[:, None].expand_as(live), live, "amax", include_self=True)
    w_self = torch.exp(self_logit - m)
    # Edges past the cutoff weigh 0; the clamp keeps their exp from overflowing into inf * 0.
    w = envelope[:, None] * torch.exp((logit - m.index_select(0, dst)).clamp(max=0.0))
    z = w_self.index_add(0, dst, w)
    return w_self / z, w / z.index_select(0, dst)


class TransIPBlock(nn.Module):
    """One pre-norm Transformer layer with edge-restricted multi-head attention (see the module docstring).

    Shapes:
        x ``[N, width]`` -> ``[N, width]``.
    """

    def __init__(self, width: int, channels: int, vector_channels: int, heads: int, ff_hidden: int, radial_dim: int):
        super().__init__()
        self.channels, self.vector_channels = channels, vector_channels
        self.heads, self.head_dim = heads, channels // heads
        self.norm_attn = nn.RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * channels)
        self.edge_kv = nn.Linear(channels, 2 * channels)
        self.edge_bias = nn.Linear(radial_dim, heads)
        self.self_bias = nn.Parameter(torch.zeros(heads))
        self.out = nn.Linear(channels, width)
        self.vector_gate = nn.Linear(channels, vector_channels) if vector_channels else None
        self.register_buffer("head_of_vector", torch.arange(vector_channels) % heads, persistent=False)
        self.norm_ff = nn.RMSNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_hidden), nn.SiLU(), nn.Linear(ff_hidden, width))

    def forward(self, x: torch.Tensor, e: _Edges) -> torch.Tensor:
        n, num_edges, H, d = x.shape[0], e.src.shape[0], self.heads, self.head_dim
        q, k, v = self.qkv(self.norm_attn(x)).view(n, 3, H, d).unbind(1)
        ek, ev = self.edge_kv(e.feat).view(num_edges, 2, H, d).unbind(1)
        key = k.index_select(0, e.src) + ek
        val = v.index_select(0, e.src) + ev  # [E, H, d]
        logit = (q.index_select(0, e.dst) * key).sum(-1) * d**-0.5 + self.edge_bias(e.radial)
        self_logit = (q * k).sum(-1) * d**-0.5 + self.self_bias
        a_self, a = _edge_softmax(self_logit, logit, e.envelope, e.dst)
        agg = (a_self[..., None] * v).index_add(0, e.dst, a[..., None] * val)
        x = x + self.out(agg.reshape(n, self.channels))
        if self.vector_gate is not None:  # geometric vectors: sum_j a_ij g_c(val_ij) Y1(r_ij)
            g = self.vector_gate(val.reshape(num_edges, self.channels)) * a[:, self.head_of_vector]
            vec = (g[:, :, None] * e.y1[:, None, :]).reshape(num_edges, 3 * self.vector_channels)
            upd = vec.new_zeros(n, vec.shape[1]).index_add(0, e.dst, vec)
            x = torch.cat([x[:, : self.channels], x[:, self.channels :] + upd], dim=1)
        return x + self.ff(self.norm_ff(x))


@dataclass
class TransIPConfig(ModelConfig):
    """Config of ``"transip"``: ``channels`` are the scalar columns of a token and the attention width,
    ``num_interactions`` the Transformer layers.

    Attributes:
        num_heads: attention heads (must divide ``channels``).
        ff_hidden: hidden width of the feed-forward layers (None: twice the token width
            ``channels + 3 * vector_channels``).
        vector_channels: Cartesian vector (``1o``) columns per token, besides the scalars (0: none).
        frame_averaging: average the energy over frames of each structure (8 signed principal axes; more where
            they are degenerate), making it exactly rotation- and reflection-invariant (8x the cost or more); a
            runtime switch that does not change the parameters.
        equivariance: how training teaches equivariance (:meth:`TransIPPotential.regularizers`): ``"alignment"``
            (embeddings must transform by the fixed Wigner-D matrices of their declared irreps) or ``"learned"``
            (the paper's mechanism: a learned transformation network and a contrastive loss on each structure's
            pooled final embedding, rotations only; adds the network's parameters; meant to be trained with
            rotation augmentation and a fixed weight). Configs written before the field existed mean
            ``"alignment"``.
        contrastive_temperature: temperature of the contrastive loss (``equivariance: learned``).
    """

    num_heads: int = 4
    ff_hidden: int | None = None
    vector_channels: int = 8
    frame_averaging: bool = False
    equivariance: str = "alignment"
    contrastive_temperature: float = 0.1

    def validate(self) -> None:
        super().validate()
        self._check_positive("num_heads")
        if self.ff_hidden is not None and self.ff_hidden < 1:
            raise ConfigError(f"model config: ff_hidden must be a positive integer or null, got {self.ff_hidden}")
        if self.vector_channels < 0:
            raise ConfigError(f"model config: vector_channels must be >= 0, got {self.vector_channels}")
        if not isinstance(self.frame_averaging, bool):
            raise ConfigError(f"model config: frame_averaging must be true or false, got {self.frame_averaging!r}")
        if self.equivariance not in EQUIVARIANCE_MODES:
            raise ConfigError(
                f"model config: equivariance must be one of {', '.join(EQUIVARIANCE_MODES)}, got {self.equivariance!r}"
            )
        self._check_positive("contrastive_temperature")
        if self.channels % self.num_heads:
            raise ConfigError(
                f"model config: num_heads ({self.num_heads}) must divide channels ({self.channels}) "
                f"for family 'transip'"
            )
        width = self.channels + 3 * self.vector_channels
        ff = self.ff_hidden or 2 * width
        per_layer = 4 * width * self.channels + 2 * self.channels**2 + 2 * width * ff
        transform = 12 * width**2 if self.equivariance == "learned" else 0  # the LatentTransform
        estimate_parameters_guard(
            self.num_interactions * per_layer + transform,
            {
                "channels": self.channels,
                "vector_channels": self.vector_channels,
                "ff_hidden": self.ff_hidden,
                "num_interactions": self.num_interactions,
            },
        )


# Equivariance is learned (the alignment loss); frame averaging makes it exact, but only when switched on.
@register_model("transip", config=TransIPConfig, exactly_equivariant=False)
class TransIPPotential(Potential):
    """Transformer potential with learned equivariance (family ``"transip"``).

    Config fields used: ``channels`` (scalar columns and attention width), ``vector_channels``, ``num_heads``,
    ``ff_hidden`` (None: twice the token width), ``num_interactions`` (layers), ``cutoff``, ``num_radial``,
    ``radial_hidden``, ``radial_layers``, ``envelope_p``, ``readout_hidden``, ``frame_averaging``,
    ``equivariance``, ``contrastive_temperature``.

    Training hooks (:meth:`training_hooks`): :meth:`regularizers`, per symmetry type the alignment violations of
    :meth:`embed` (token embeddings and their declared irreps) or, with ``equivariance: learned``, the rotation
    violation of the learned transform (``latent_transform``) on pooled embeddings, with the contrastive loss's
    gradient.
    """

    takes_node_graph = True  # frame averaging builds frames per structure
    records_outputs = True  # the regularizers reuse the forward pass's tokens

    def __init__(self, config: TransIPConfig):
        super().__init__(config)
        c = config
        self.channels, self.vector_channels = c.channels, c.vector_channels
        self.width = c.channels + 3 * c.vector_channels
        self.irreps = Irreps(((c.channels, 0, 1),) + (((c.vector_channels, 1, -1),) if c.vector_channels else ()))
        self.embedding = ElementEmbedding(c.num_elements, c.channels)
        self.basis = BesselBasis(c.cutoff, c.num_radial)
        self.envelope = PolynomialEnvelope(c.cutoff, c.envelope_p)
        dims = [c.num_radial] + [c.radial_hidden] * c.radial_layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.radial = nn.Sequential(*layers)
        self.edge_embed = nn.Linear(dims[-1] + 3, c.channels)
        ff_hidden = c.ff_hidden or 2 * self.width
        self.blocks = nn.ModuleList(
            TransIPBlock(self.width, c.channels, c.vector_channels, c.num_heads, ff_hidden, dims[-1])
            for _ in range(c.num_interactions)
        )
        self.readout_norm = nn.RMSNorm(c.channels)
        self.readout = ScalarReadout(c.channels, c.readout_hidden)
        # built last, so a seed gives the same backbone with either equivariance mode
        self.latent_transform = LatentTransform(self.width) if c.equivariance == "learned" else None

    # ------------------------------------------------------------------------------------- backbone
    def tokens(
        self,
        species: torch.Tensor,
        vectors: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        num_atoms: int,
        condition: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Token embeddings after each layer (``condition``: added to the scalar columns, see
        :meth:`Potential.interaction_energies`).

        Shapes:
            species ``[N]``, vectors ``[E, 3]``, src ``[E]``, dst ``[E]``, condition ``[N, C]`` -> list of
            ``[N, width]``.
        """
        r = torch.linalg.vector_norm(vectors, dim=-1)
        radial = self.radial(self.basis(r))
        direction = vectors / r[:, None]
        edges = _Edges(
            src,
            dst,
            radial,
            self.edge_embed(torch.cat([radial, direction], dim=1)),
            self.envelope(r),
            spherical_harmonics(vectors, 1)[:, 1:],
        )
        h = self.embedding(species)
        if condition is not None:
            h = h + condition
        x = torch.cat([h, h.new_zeros(num_atoms, self.width - self.channels)], dim=1)
        out = []
        for block in self.blocks:
            x = block(x, edges)
            out.append(x)
        return out

    def _energies(self, species, vectors, src, dst, num_atoms, condition=None, record=None) -> torch.Tensor:
        xs = self.tokens(species, vectors, src, dst, num_atoms, condition)
        if record is not None:  # every layer's tokens, for the regularizers (embed(batch, "all") without a pass)
            record["tokens"] = torch.cat(xs, dim=1)
        return self.readout(self.readout_norm(xs[-1][:, : self.channels]))

    def interaction_energies(
        self,
        species: torch.Tensor,
        vectors: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        num_atoms: int,
        condition: torch.Tensor | None = None,
        node_graph: torch.Tensor | None = None,
        num_graphs: int = 1,
        record: dict | None = None,
    ) -> torch.Tensor:
        """Per-atom interaction energies, frame-averaged when ``config.frame_averaging``.

        Frames are per structure: ``node_graph`` is the structure of each atom (:meth:`Potential.forward` passes
        it, :attr:`takes_node_graph`); without it all atoms are one structure. ``record`` (training,
        :attr:`records_outputs`): gets ``"tokens"``, every layer's token embeddings, when no frames are averaged.

        Shapes:
            species ``[N]``, vectors ``[E, 3]``, src ``[E]``, dst ``[E]``, condition ``[N, C]``, node_graph
            ``[N]`` -> ``[N]``.
        """
        if not self.config.frame_averaging:
            return self._energies(species, vectors, src, dst, num_atoms, condition, record)
        if node_graph is None:
            node_graph, num_graphs = torch.zeros(num_atoms, dtype=torch.long, device=species.device), 1
        edge_graph = node_graph.index_select(0, src)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        # Symbolic tracing (mlip export) cannot branch on values: it keeps the principal axes everywhere.
        tracing = torch.compiler.is_compiling() or isinstance(vectors, FakeTensor)
        frames = averaging_frames(vectors, self.envelope(r), edge_graph, num_graphs, resolve_degenerate=not tracing)
        signs = FRAME_SIGNS.to(dtype=vectors.dtype, device=vectors.device)
        if frames.degenerate:
            return self._energies_in_frames(species, vectors, src, dst, condition, node_graph, frames, signs)
        local = torch.einsum("ei,eij->ej", vectors, frames.axes.index_select(0, edge_graph))  # coordinates in the frame
        f = signs.shape[0]
        offsets = (torch.arange(f, device=src.device) * num_atoms)[:, None]
        e = self._energies(
            species.repeat(f),
            (local[None] * signs[:, None, :]).reshape(-1, 3),
            (src[None] + offsets).reshape(-1),
            (dst[None] + offsets).reshape(-1),
            f * num_atoms,
            None if condition is None else condition.repeat(f, 1),
        )
        return e.view(f, num_atoms).mean(0)

    def _energies_in_frames(self, species, vectors, src, dst, condition, node_graph, frames, signs) -> torch.Tensor:
        """Frame averaging when some structures have their own frames (degenerate axes, see
        :func:`~mlip_cli.models.soft_equivariance.averaging_frames`): each frame evaluates only its structure's
        atoms and edges, all frames in one batched pass."""
        num_graphs = frames.axes.shape[0]
        own = [frames.degenerate.get(b, frames.axes[b] * signs[:, None, :]) for b in range(num_graphs)]
        per_frame = torch.cat(own)  # [F, 3, 3]
        counts = torch.tensor([len(f) for f in own], device=src.device)
        frame_graph = torch.repeat_interleave(torch.arange(num_graphs, device=src.device), counts)  # [F]
        frame_weight = 1.0 / counts.to(vectors.dtype).index_select(0, frame_graph)

        def members(graph):  # items grouped by structure; rank of each within its structure
            order = torch.argsort(graph, stable=True)
            count = torch.bincount(graph, minlength=num_graphs)
            first = torch.cumsum(count, 0) - count
            rank = torch.empty_like(graph)
            rank[order] = torch.arange(graph.shape[0], device=graph.device) - first.index_select(0, graph[order])
            return order, count, first, rank

        def copies(order, count, first):  # every item of each frame's structure: (frame, item), frames' starts
            size = count.index_select(0, frame_graph)
            frame_of = torch.repeat_interleave(torch.arange(len(size), device=src.device), size)
            start = torch.cumsum(size, 0) - size
            at = torch.arange(frame_of.shape[0], device=src.device) - start.index_select(0, frame_of)
            items = order.index_select(0, first.index_select(0, frame_graph).index_select(0, frame_of) + at)
            return frame_of, items, start

        atom_order, atom_count, atom_first, atom_rank = members(node_graph)
        atom_frame, atoms, frame_start = copies(atom_order, atom_count, atom_first)
        edge_order, edge_count, edge_first, _ = members(node_graph.index_select(0, src))
        edge_frame, edges, _ = copies(edge_order, edge_count, edge_first)
        offset = frame_start.index_select(0, edge_frame)  # where each frame's copy of its atoms starts
        local = torch.einsum("ei,eij->ej", vectors.index_select(0, edges), per_frame.index_select(0, edge_frame))
        e = self._energies(
            species.index_select(0, atoms),
            local,
            offset + atom_rank.index_select(0, src.index_select(0, edges)),
            offset + atom_rank.index_select(0, dst.index_select(0, edges)),
            atoms.shape[0],
            None if condition is None else condition.index_select(0, atoms),
        )
        weighted = e * frame_weight.index_select(0, atom_frame)
        return weighted.new_zeros(species.shape[0]).index_add(0, atoms, weighted)

    # --------------------------------------------------------------------------- learned equivariance
    def embed(self, batch, layers: str = "last") -> tuple[torch.Tensor, Irreps]:
        """Token embeddings of a batch (no frame averaging) and their declared irreps.

        Args:
            batch: a :class:`~mlip_datasets.graph.Batch`.
            layers: ``"last"``: the final layer; ``"all"``: every layer's output side by side.

        Shapes:
            -> ``[N, width]`` (``[N, num_interactions * width]`` for ``"all"``) and an :class:`Irreps`.
        """
        dtype = self.dtype
        src, dst = batch.edge_index[0], batch.edge_index[1]
        vectors = edge_vectors(
            batch.positions.to(dtype), batch.cell.to(dtype), batch.shifts.to(dtype), batch.edge_index, batch.batch
        )
        species, num_atoms = self.element_table(batch.numbers), int(batch.numbers.shape[0])
        xs = self.tokens(species, vectors, src, dst, num_atoms, self.node_condition(batch))
        if layers == "last":
            return xs[-1], self.irreps
        if layers == "all":
            return torch.cat(xs, dim=1), self.irreps * len(xs)
        raise ValueError(f"layers must be 'last' or 'all', got {layers!r}")

    def training_hooks(self) -> TrainingHooks:
        """The learned equivariance: :meth:`regularizers` for each generator of O(3) (``learned``: rotations)."""
        types = (ROTATION,) if self.latent_transform is not None else SYMMETRY_TYPES
        return TrainingHooks(symmetry_types=types, regularizers=self.regularizers)

    def regularizers(self, batch, out: dict | None = None) -> dict[str, torch.Tensor]:
        """Equivariance violations (differentiable scalars) per generator of O(3) (:mod:`mlip_cli.models.symmetry`):
        ``rotation`` (each structure its own Haar-random rotation, torch's global RNG) and ``inversion``
        (``r -> -r``), each with its own weight since each can hold without the other. What is measured depends on
        ``config.equivariance``:

        * ``"alignment"``: :func:`~mlip_cli.models.soft_equivariance.alignment_loss` of ``embed(g x)`` against
          ``D(g) embed(x)`` over all layers' embeddings (declared irreps, fixed Wigner-D matrices).
        * ``"learned"`` (``rotation`` only): with ``p(x)`` the mean over a structure's atoms of its final-layer
          tokens, the violation ``alignment_loss(p(g x), T(p(x), g))`` of the learned transform relative to the
          spread of ``p`` over the batch's structures
          (:class:`~mlip_cli.models.learned_transform.LatentTransform`). The gradient also carries the contrastive
          loss over the batch's structures, centred over the batch
          (:func:`~mlip_cli.models.learned_transform.contrastive_loss`), which
          has no zero and is therefore added with value 0 (``c - c.detach()``).

        ``out``: :meth:`forward`'s output on ``batch`` (the trainer's); its ``"tokens"`` (all layers' embeddings,
        ``[N, num_interactions * width]``) are reused, else they are computed here.
        """
        out = out or {}
        tokens = out.get("tokens")
        if tokens is None:
            tokens = self.embed(batch, layers="all")[0]
        if self.latent_transform is not None:
            return {ROTATION: self._learned_violation(batch, tokens[:, -self.width :])}
        irreps = self.irreps * len(self.blocks)
        atom_graph, species = batch.batch, self.element_table(batch.numbers)
        losses = {}
        for name in SYMMETRY_TYPES:
            g = draw(name, batch.num_graphs).to(device=tokens.device, dtype=tokens.dtype)
            moved = self.embed(transform_batch(batch, g), layers="all")[0]
            losses[name] = alignment_loss(
                moved, rotate_embeddings(tokens, irreps, g.index_select(0, atom_graph)), groups=species
            )
        return losses

    def pooled(self, tokens: torch.Tensor, batch) -> torch.Tensor:
        """Mean of each structure's token embeddings.

        Shapes:
            tokens ``[N, D]`` -> ``[num_graphs, D]``.
        """
        count = torch.bincount(batch.batch, minlength=batch.num_graphs).clamp(min=1).to(tokens.dtype)
        return scatter_sum(tokens, batch.batch, batch.num_graphs) / count[:, None]

    def _learned_violation(self, batch, final: torch.Tensor) -> torch.Tensor:
        """The ``learned`` rotation regulariser (:meth:`regularizers`): one extra embedding pass, no forces."""
        g = draw(ROTATION, batch.num_graphs).to(device=final.device, dtype=final.dtype)
        moved = self.pooled(self.embed(transform_batch(batch, g), layers="last")[0], batch)
        predicted = self.latent_transform(self.pooled(final, batch), g)
        # centred over the batch: structures of one molecule share almost all of their pooled embedding, and
        # cosines of the raw vectors could not tell them apart (the loss stays at log B)
        contrast = contrastive_loss(
            predicted - predicted.mean(0), moved - moved.mean(0), self.config.contrastive_temperature
        )
        # relative to the spread between structures (one group): the part all of them share is trivially invariant
        spread = torch.zeros(batch.num_graphs, dtype=torch.long, device=final.device)
        return alignment_loss(moved, predicted, groups=spread) + (contrast - contrast.detach())
