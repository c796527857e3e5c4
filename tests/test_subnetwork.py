"""Subnetwork: statistics, set operations, save/load and refusal of a mismatched model."""

import pytest
import torch

from kcs_tl import Subnetwork, attach_masks, majority
from kcs_tl.adapters import fingerprint, hook_site, weight_site

from conftest import tiny_model


def known(model, *bits):
    """A subnetwork over one head gate site (4 heads) with the given membership."""
    site = hook_site(model, 1, "attn.hook_z")
    return Subnetwork({site.address: torch.tensor(bits, dtype=torch.bool)}, {site.address: site},
                      fingerprint(model))


def test_set_operations_and_jaccard_on_known_cases(model):
    a, b, c = known(model, 1, 1, 0, 0), known(model, 0, 1, 1, 0), known(model, 0, 1, 0, 1)
    assert (a | b).masks["blocks.1.attn.hook_z"].tolist() == [True, True, True, False]
    assert (a & b).masks["blocks.1.attn.hook_z"].tolist() == [False, True, False, False]
    assert a.jaccard(b) == pytest.approx(1 / 3)
    assert a.jaccard(a) == 1.0
    assert known(model, 0, 0, 0, 0).jaccard(known(model, 0, 0, 0, 0)) == 1.0
    assert majority([a, b, c], 2).masks["blocks.1.attn.hook_z"].tolist() == [False, True, False, False]
    assert majority([a, b, c], 1).masks["blocks.1.attn.hook_z"].tolist() == [True, True, True, True]
    with pytest.raises(ValueError, match="1..3"):
        majority([a, b, c], 4)


def test_set_operations_refuse_different_sites(model):
    other_site = hook_site(model, 0, "attn.hook_z")
    other = Subnetwork({other_site.address: torch.ones(4, dtype=torch.bool)},
                       {other_site.address: other_site}, fingerprint(model))
    with pytest.raises(ValueError, match="different sites"):
        known(model, 1, 0, 0, 0) | other


def test_sparsity_tables_sum_over_axes(model):
    site = weight_site(model, 1, "W_Q")
    mask = torch.zeros(site.shape, dtype=torch.bool)
    mask[2, :4, :] = True  # 32 weights of head 2
    col = weight_site(model, 1, "W_in", "column")
    cmask = torch.zeros(col.shape, dtype=torch.bool)
    cmask[0, 5] = True  # neuron 5: a whole column of 32 weights
    sub = Subnetwork({site.address: mask, col.address: cmask}, {site.address: site, col.address: col},
                     fingerprint(model))
    assert sub.sparsity() == pytest.approx(1 - 64 / (4 * 32 * 8 + 32 * 64))
    heads = sub.stats("head")
    assert heads.set_index("head").loc[2, "in_subnetwork"] == 32
    assert heads["in_subnetwork"].sum() == 32
    neurons = sub.stats("neuron")
    assert neurons.set_index("neuron").loc[5, "in_subnetwork"] == 32
    assert neurons["total"].iloc[0] == 32
    layer = sub.stats("layer")
    assert layer["in_subnetwork"].tolist() == [64]
    assert set(sub.stats("module")["module"]) == {"attn", "mlp"}
    assert sub.stats("overall")["sparsity"].iloc[0] == pytest.approx(sub.sparsity())
    with pytest.raises(ValueError, match="neuron"):
        sub.stats("block")
    assert "sparsity" in sub._repr_html_()


def trained_like(model, tokens):
    masked = attach_masks(model, hooks=("mlp.hook_post",), init_prob=0.5, ablation="mean", reference=tokens)
    with torch.no_grad():
        for p in masked.scores.values():
            p.normal_(generator=torch.Generator().manual_seed(0))
    sub = masked.to_subnetwork(note="test")
    masked.detach()
    return sub


def test_save_load_round_trip(model, tokens, tmp_path):
    sub = trained_like(model, tokens)
    sub.save(tmp_path / "run")
    loaded = Subnetwork.load(tmp_path / "run", model=model)
    assert loaded.sites == sub.sites
    assert all(torch.equal(loaded.masks[a], sub.masks[a]) and loaded.masks[a].dtype == torch.bool
               for a in sub.masks)
    assert all(torch.equal(loaded.replacements[a], sub.replacements[a]) for a in sub.replacements)
    assert loaded.settings["note"] == "test" and loaded.settings["ablation"] == "mean"
    with sub.removed(model):
        expected = model(tokens)
    with loaded.removed(model):
        assert torch.equal(model(tokens), expected)


def test_saving_never_overwrites_silently(model, tokens, tmp_path):
    sub = trained_like(model, tokens)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        sub.save(tmp_path)
    with pytest.raises(FileExistsError, match="never replaces them, even with overwrite"):
        sub.save(tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    sub.save(tmp_path / "run")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sub.save(tmp_path / "run")
    sub.save(tmp_path / "run", overwrite=True)


def test_loading_onto_a_different_model_says_what_differs(model, tokens, tmp_path):
    trained_like(model, tokens).save(tmp_path / "run")
    with pytest.raises(ValueError, match="d_mlp: saved 64, model 128"):
        Subnetwork.load(tmp_path / "run", model=tiny_model(d_mlp=128))
    with pytest.raises(FileNotFoundError, match="not a saved subnetwork"):
        Subnetwork.load(tmp_path)


def test_masks_must_be_boolean_in_the_site_shape(model):
    site = hook_site(model, 1, "attn.hook_z")
    with pytest.raises(ValueError, match="bool of shape"):
        Subnetwork({site.address: torch.ones(4)}, {site.address: site}, fingerprint(model))
