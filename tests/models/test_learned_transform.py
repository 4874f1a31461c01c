"""TransIP's learned equivariance (``equivariance: learned``): the transformation network, the contrastive loss
and their wiring into the regularisers (pooled final embeddings, rotations), in float64 on tiny models. Training
with them: tests/train/test_learned_transform_training.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import molecule
from models_testlib import tiny_config

from mlip_cli.models import ConfigError, ModelConfig, build_model
from mlip_cli.models.learned_transform import LatentTransform, contrastive_loss
from mlip_cli.models.soft_equivariance import alignment_loss
from mlip_cli.models.symmetry import draw, transform_batch
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure
from mlip_kernels.wigner import random_rotation


def _config(**changes) -> dict:
    return tiny_config("transip", **{**dict(channels=8, vector_channels=2, num_heads=2, ff_hidden=16), **changes})


def _model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_model(_config(**changes), dtype=torch.float64)


def _batch(graphs):
    return collate_graphs([graphs[k] for k in ("bulk", "slab", "molecule")])


def _equivariant_features(positions: np.ndarray, scalars: int = 3, vectors: int = 3) -> np.ndarray:
    """An exactly O(3)-equivariant per-atom map written out in numpy: Gaussian-weighted sums over the other atoms
    of invariants (``0e`` columns) and of relative position vectors (``1o`` columns, x y z per channel)."""
    rel = positions[None, :, :] - positions[:, None, :]  # [i, j, 3]: r_j - r_i
    d2 = (rel**2).sum(-1)
    off = ~np.eye(len(positions), dtype=bool)
    widths = np.linspace(0.5, 3.0, max(scalars, vectors))
    s = np.stack([(np.exp(-d2 / w**2) * off).sum(1) for w in widths[:scalars]], 1)
    v = np.stack([((np.exp(-d2 / w**2) * off)[..., None] * rel).sum(1) for w in widths[:vectors]], 1)
    return np.concatenate([s, v.reshape(len(positions), -1)], 1)


def _move_declared(features: torch.Tensor, g: torch.Tensor, scalars: int = 3) -> torch.Tensor:
    """``D(g) h`` for the layout of :func:`_equivariant_features` (vectors map to ``g v``)."""
    v = features[:, scalars:].reshape(len(features), -1, 3)
    return torch.cat([features[:, :scalars], torch.einsum("ij,ncj->nci", g, v).reshape(len(features), -1)], 1)


# ------------------------------------------------------------------------------------ transformation network
def test_latent_transform_shapes_identity_start_and_gradients():
    torch.manual_seed(0)
    T = LatentTransform(7).double()
    h = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    g = random_rotation(5).double()
    y = T(h, g)
    assert y.shape == (5, 7)
    torch.testing.assert_close(y, h, rtol=0, atol=0)  # starts as the identity: T(h, g) = h
    with torch.no_grad():  # move off the identity, then check gradients in h and in the parameters
        for p in T.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert torch.autograd.gradcheck(lambda x: T(x, g), (h,))
    T(h, g).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in T.parameters())
    with pytest.raises(ValueError, match="LatentTransform"):
        T(h, g[:4])


def test_latent_transform_can_represent_the_declared_scalars_and_vectors():
    """Its bilinear part holds D(g) exactly: with hand-set weights it maps [s, v] to [s, g v] for rotations and
    for the inversion (vectors flip)."""
    s, c = 2, 3
    width = s + 3 * c
    T = LatentTransform(width).double()
    with torch.no_grad():
        W = torch.zeros(width, 10 * width, dtype=torch.float64)
        W[:s, :s] = torch.eye(s)
        for ch in range(c):
            for i in range(3):
                for j in range(3):  # out (ch, i) += g[i, j] * h[(ch, j)]; pair column = width + 9 k + (3 i + j)
                    k = s + 3 * ch + j
                    W[s + 3 * ch + i, width + 9 * k + 3 * i + j] = 1.0
        T.bilinear.weight.copy_(W)
    torch.manual_seed(1)
    h = torch.randn(6, width, dtype=torch.float64)
    for g in (random_rotation(1)[0].double(), -torch.eye(3, dtype=torch.float64)):
        expected = torch.cat([h[:, :s], torch.einsum("ij,ncj->nci", g, h[:, s:].reshape(6, c, 3)).reshape(6, -1)], 1)
        torch.testing.assert_close(T(h, g.expand(6, 3, 3)), expected, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------- contrastive loss
def test_contrastive_loss_prefers_the_truly_equivariant_pair():
    """Independent oracle: features built from positions by an exactly equivariant numpy map. The loss of the
    exact transform against the features of the rotated cloud is far below the loss against shuffled or
    unrelated embeddings (about log N)."""
    rng = np.random.default_rng(0)
    n = 24
    x = rng.normal(scale=1.5, size=(n, 3))
    g = random_rotation(1, generator=torch.Generator().manual_seed(3))[0].double()
    h = torch.as_tensor(_equivariant_features(x))
    moved = torch.as_tensor(_equivariant_features(x @ g.numpy().T))
    predicted = _move_declared(h, g)
    torch.testing.assert_close(predicted, moved, rtol=1e-12, atol=1e-12)  # the oracle is equivariant

    exact = float(contrastive_loss(predicted, moved, temperature=0.05))
    shuffled = float(contrastive_loss(predicted, moved[torch.randperm(n, generator=torch.Generator().manual_seed(0))]))
    unrelated = float(contrastive_loss(predicted, torch.randn(n, h.shape[1], dtype=torch.float64), temperature=0.05))
    wrong_rotation = float(contrastive_loss(h, moved, temperature=0.05))  # the identity instead of D(g)
    assert exact < 0.25 * math.log(n), exact
    assert shuffled > 0.5 * math.log(n) and unrelated > 0.5 * math.log(n), (shuffled, unrelated)
    assert exact < wrong_rotation, (exact, wrong_rotation)


def test_contrastive_loss_single_row_and_bad_input():
    torch.manual_seed(0)
    a = torch.randn(50, 4, dtype=torch.float64)
    assert float(contrastive_loss(a[:1], torch.randn(1, 4, dtype=torch.float64))) == 0.0  # nothing to tell apart
    assert float(contrastive_loss(a, a, temperature=0.2)) < float(contrastive_loss(a, a.flip(0), temperature=0.2))
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(a, a, temperature=0.0)
    with pytest.raises(ValueError, match="shapes"):
        contrastive_loss(a, a[:3])


# ------------------------------------------------------------------------------------------------ the model
def test_config_field_defaults_to_alignment_and_rejects_bad_values():
    old = {k: v for k, v in _config().items()}  # a config written before the field existed
    assert "equivariance" not in old
    assert ModelConfig.from_dict(old).equivariance == "alignment"
    with pytest.raises(ConfigError, match="equivariance must be one of alignment, learned"):
        ModelConfig.from_dict(_config(equivariance="contrastive"))
    with pytest.raises(ConfigError, match="contrastive_temperature"):
        ModelConfig.from_dict(_config(equivariance="learned", contrastive_temperature=0.0))


def test_an_old_config_builds_the_same_model_and_learned_adds_only_the_transform(graphs):
    old, explicit, learned = _model(), _model(equivariance="alignment"), _model(equivariance="learned")
    assert old.latent_transform is None
    old_state = old.state_dict()
    assert old_state.keys() == explicit.state_dict().keys()
    for k, v in explicit.state_dict().items():
        assert torch.equal(v, old_state[k]), k
    learned_state = learned.state_dict()
    extra = set(learned_state) - set(old_state)
    assert extra and all(k.startswith("latent_transform.") for k in extra)
    for k, v in old_state.items():  # the same seed builds the same backbone: the transform is built last
        assert torch.equal(learned_state[k], v), k
    batch = _batch(graphs)
    torch.testing.assert_close(learned.eval()(batch)["forces"], old.eval()(batch)["forces"], rtol=0, atol=0)
    assert learned.training_hooks().symmetry_types == ("rotation",)
    assert old.training_hooks().symmetry_types == ("rotation", "inversion")


def test_pooled_is_the_mean_over_each_structures_atoms(graphs):
    model = _model()
    batch = _batch(graphs)
    tokens = torch.randn(batch.numbers.shape[0], 5, dtype=torch.float64)
    expected = torch.stack([tokens[batch.batch == b].mean(0) for b in range(batch.num_graphs)])
    torch.testing.assert_close(model.pooled(tokens, batch), expected, rtol=1e-14, atol=1e-14)


def test_learned_regularizers_reuse_the_forward_output_and_backpropagate(graphs):
    model = _model(equivariance="learned").train()
    batch = _batch(graphs)
    out = model(batch, create_graph=True)

    def run(given):
        torch.manual_seed(7)
        return model.regularizers(batch, given)

    reused, fresh = run(out), run(None)
    assert set(reused) == {"rotation"}
    assert reused["rotation"].item() == pytest.approx(fresh["rotation"].item(), rel=1e-10)
    assert reused["rotation"].item() > 0
    reused["rotation"].backward()
    T = model.latent_transform
    assert T.bilinear.weight.grad is not None and T.bilinear.weight.grad.abs().sum() > 0
    assert model.blocks[0].qkv.weight.grad.abs().sum() > 0


def test_forward_in_training_returns_every_layers_tokens_and_not_in_eval(graphs):
    """The trainer's forward pass carries the embeddings the regularizers need (no second embedding pass)."""
    model = _model().train()
    batch = _batch(graphs)
    out = model(batch, create_graph=True)
    torch.testing.assert_close(out["tokens"], model.embed(batch, "all")[0], rtol=0, atol=1e-12)
    assert "tokens" not in model.eval()(batch)


@pytest.mark.parametrize("mode", ["alignment", "learned"])
def test_regularizers_take_the_tokens_from_the_output_they_are_given(mode, graphs):
    """A forward output that carries ``tokens`` (all layers' embeddings of the batch) spares the embedding pass:
    the result is the same as when the regularisers compute them, and it is the given tensor that is used."""
    model = _model(equivariance=mode).train()
    batch = _batch(graphs)
    tokens = model.embed(batch, "all")[0]

    def run(out):
        torch.manual_seed(3)
        return model.regularizers(batch, out)

    given, computed = run({"tokens": tokens}), run(None)
    assert given.keys() == computed.keys() == set(model.training_hooks().symmetry_types)
    for k in given:
        assert given[k].item() == pytest.approx(computed[k].item(), rel=1e-10)
    assert run({"tokens": torch.zeros_like(tokens)})["rotation"].item() != pytest.approx(given["rotation"].item())


def test_learned_regularizer_value_is_the_pooled_violation_and_contrast_adds_only_gradient(graphs):
    """The value the weights read is the violation of the transform on pooled final embeddings (relative to their
    spread over the structures); the gradient is that of the violation plus the contrastive loss (recomputed here
    from the model's pieces)."""
    model = _model(equivariance="learned").train()
    batch = _batch(graphs)
    torch.manual_seed(11)
    value = model.regularizers(batch)["rotation"]
    torch.manual_seed(11)
    g = draw("rotation", batch.num_graphs).double()
    moved = model.pooled(model.embed(transform_batch(batch, g), "last")[0], batch)
    predicted = model.latent_transform(model.pooled(model.embed(batch, "last")[0], batch), g)
    violation = alignment_loss(moved, predicted, groups=torch.zeros(batch.num_graphs, dtype=torch.long))
    assert value.item() == pytest.approx(violation.item(), rel=1e-10)

    def grad(loss):
        model.zero_grad()
        loss.backward()
        return model.latent_transform.mlp[0].weight.grad.clone()

    contrast = contrastive_loss(
        predicted - predicted.mean(0), moved - moved.mean(0), model.config.contrastive_temperature
    )
    expected = grad(violation + contrast)
    torch.manual_seed(11)
    torch.testing.assert_close(grad(model.regularizers(batch)["rotation"]), expected, rtol=1e-9, atol=1e-12)


def test_the_transform_learns_how_the_pooled_embedding_rotates():
    """With the backbone fixed, Adam steps on the learned regulariser train the transform alone to pick out each
    structure's rotated pooled embedding among those of similar structures (8 rattled copies of one molecule, the
    hard case), for rotations it has not seen: the contrastive loss there falls well below the identity's."""
    model = _model(equivariance="learned").train()
    base = molecule("CH3CH2OH")
    structures = []
    for k in range(8):
        atoms = base.copy()
        atoms.rattle(0.1, seed=k)
        structures.append(Structure.from_atoms(atoms))
    batch = collate_graphs([structure_to_graph(s, model.config.cutoff, dtype=torch.float64) for s in structures])
    temperature = model.config.contrastive_temperature
    with torch.no_grad():
        g = random_rotation(batch.num_graphs, generator=torch.Generator().manual_seed(123)).double()
        moved = model.pooled(model.embed(transform_batch(batch, g), "last")[0], batch)
        pooled = model.pooled(model.embed(batch, "last")[0], batch)

    def held_out_loss() -> float:
        with torch.no_grad():
            predicted = model.latent_transform(pooled, g)
            return float(contrastive_loss(predicted - predicted.mean(0), moved - moved.mean(0), temperature))

    before = held_out_loss()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("latent_transform."))
    opt = torch.optim.Adam(model.latent_transform.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(40):
        opt.zero_grad()
        model.regularizers(batch)["rotation"].backward()
        opt.step()
    after = held_out_loss()
    assert after < before / 2, (before, after)
