"""Every bad input gets a clear one-line error, and nothing it touched is changed.

``BAD_INPUTS`` is the table: one row per distinct bad input, through the Python
API and the command line. ``pytest --collect-only -q tests/test_errors.py -k bad_input``
lists them. The other tests here cover the guarantees around failures: a failed
start leaves the model as it was, a checkpoint cannot run code, a non-finite
search stops at its last finite checkpoint, same-seed runs are bit-identical.
"""

import contextlib
import dataclasses
import io
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.nn.utils import parametrize

import kcs_tl.cli as cli
import kcs_tl.cli.demo as cli_demo
import kcs_tl.cli.discover as cli_discover
import kcs_tl.discovery.search as search
import kcs_tl.masks.masked_model as masked_model
from kcs_tl import (
    HardConcrete, KnowledgeGraph, MaskedModel, StraightThroughSigmoid, Subnetwork, Triplet, attach_masks,
    evaluate, get_relaxation, lm_blocks,
)
from kcs_tl.discovery import DiscoveryConfig, Search, discover
from kcs_tl.discovery.config import FIELD_CHECKS

from conftest import toy_world

QUICK = dict(steps=30, eval_every=10, kg_batch_size=16, lm_batch_size=4, progress=False,
             early_stop=False, layers=(1,))


class CLIExit(Exception):
    """The command line exited with status 2; the message is what it printed."""


class Context:
    """What the bad inputs are tried on: the toy world, a scratch folder, the command line."""

    def __init__(self, toy, tmp: Path):
        self.model, self.target, self.control, self.blocks = toy
        self.tmp = tmp

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def discover(self, target=None, control=None, lm=None, **settings):
        return discover(self.model, self.target if target is None else target,
                        self.control if control is None else control, self.blocks if lm is None else lm,
                        DiscoveryConfig(**QUICK | settings))

    def saved(self, edit=None, layer: int | None = None) -> Path:
        """A saved subnetwork of the toy model, its metadata edited by ``edit(meta)`` or moved to ``layer``."""
        masked = attach_masks(self.model, weights=("W_in",), layers=[1])
        sub = masked.to_subnetwork()
        masked.detach()
        path = sub.save(self.tmp / "sub")
        meta = json.loads((path / "subnetwork.json").read_text())
        if layer is not None:  # a site the model lacks, consistently in both files
            moved = f"blocks.{layer}.mlp.W_in"
            meta["sites"][0].update(layer=layer, address=moved)
            save_file({moved: sub.masks["blocks.1.mlp.W_in"]}, path / "masks.safetensors")
        if edit is not None:
            edit(meta)
        (path / "subnetwork.json").write_text(json.dumps(meta))
        return path

    def corrupt(self, name: str, content: bytes | str) -> Path:
        """A saved subnetwork whose file ``name`` holds ``content`` instead."""
        path = self.saved()
        (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def kg_files(self) -> list[str]:
        self.target.save(self.tmp / "target.jsonl")
        self.control.save(self.tmp / "control.jsonl")
        (self.tmp / "lm.txt").write_text("the story went and thing1 is red\n" * 50)
        return ["--target", str(self.tmp / "target.jsonl"), "--control", str(self.tmp / "control.jsonl"),
                "--lm", str(self.tmp / "lm.txt")]

    def cli(self, *argv: str) -> None:
        """Run ``kcs-tl argv``: it must exit with status 2 and one line on stderr, and start no search."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            with pytest.raises(SystemExit) as exit_info:
                cli.main(list(argv))
        assert exit_info.value.code == 2, err.getvalue()
        assert "Traceback" not in err.getvalue()
        raise CLIExit(err.getvalue().strip())


def no_search(*args, **kwargs):
    raise AssertionError("a bad input must be refused before the search starts")


def _meta_site(field, value):
    def edit(meta):
        meta["sites"][0][field] = value
    return edit


class Evil:
    """Unpickling this runs ``os.mkdir(path)``: what a crafted checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def crafted_checkpoint(c: Context) -> Path:
    path = c.tmp / "evil.pt"
    torch.save({"config": DiscoveryConfig().to_json(), "state": Evil(c.tmp / "pwned")}, path)
    return path


def config(**settings):
    return lambda c: DiscoveryConfig(**settings)


def long_kg(c: Context) -> KnowledgeGraph:
    head = " ".join(f"thing{i}" for i in range(12))
    return KnowledgeGraph([Triplet(head, "HasColour", "red")], c.target.templates)


def other_vocab(c: Context):
    a = attach_masks(c.model, weights=("W_in",), layers=[1])
    sub = a.to_subnetwork()
    a.detach()
    other = Subnetwork(sub.masks, sub.sites, sub.fingerprint | {"d_vocab": 1000})
    return sub | other


def hooks_twice(c: Context):
    first = attach_masks(c.model, weights=(), hooks=("mlp.hook_post",), layers=[1])
    try:
        attach_masks(c.model, weights=(), hooks=("mlp.hook_post",), layers=[1])
    finally:
        first.detach()


def subnetwork_hooks_twice(c: Context):
    a = attach_masks(c.model, weights=(), hooks=("attn.hook_z",), layers=[1])
    sub = a.to_subnetwork()
    a.detach()
    with sub.removed(c.model):
        with sub.removed(c.model):
            pass


def weights_twice(c: Context):
    first = attach_masks(c.model, weights=("W_Q",), layers=[1])
    try:
        attach_masks(c.model, weights=("W_Q",), layers=[1])
    finally:
        first.detach()


def moe_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    return HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_mlp=32, d_vocab=20, act_fn="silu",
        normalization_type="RMS", gated_mlp=True, num_experts=4, experts_per_token=2))


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))

BAD_INPUTS = [
    # -- settings: DiscoveryConfig checks every field (type, finite, range) -------------------------
    pytest.param(config(steps="10"), TypeError, r"DiscoveryConfig\.steps must be an int >= 1, got '10' \(str\)",
                 id="steps-str"),
    pytest.param(config(steps=None), TypeError, r"steps must be an int >= 1, got None", id="steps-none"),
    pytest.param(config(steps=0), ValueError, r"steps must be an int >= 1, got 0", id="steps-0"),
    pytest.param(config(steps=2.5), TypeError, r"steps must be an int", id="steps-float"),
    pytest.param(config(steps=True), TypeError, r"steps must be an int", id="steps-bool"),
    pytest.param(config(eval_every=0), ValueError, r"eval_every must be an int >= 1", id="eval_every-0"),
    pytest.param(config(kg_batch_size=-1), ValueError, r"kg_batch_size must be an int >= 1", id="kg_batch-neg"),
    pytest.param(config(lm_batch_size="4"), TypeError, r"lm_batch_size must be an int", id="lm_batch-str"),
    pytest.param(config(lm_block_len=1), ValueError, r"lm_block_len must be an int >= 2", id="block_len-1"),
    pytest.param(config(target_sparsity=1.5), ValueError, r"target_sparsity must be a finite number in \(0, 1\), "
                 r"got 1.5", id="target_sparsity-1.5"),
    pytest.param(config(target_sparsity=0), ValueError, r"target_sparsity .* in \(0, 1\)", id="target_sparsity-0"),
    pytest.param(config(target_sparsity=math.nan), ValueError, r"target_sparsity .* got nan", id="target_sparsity-nan"),
    pytest.param(config(target_sparsity="high"), TypeError, r"target_sparsity", id="target_sparsity-str"),
    pytest.param(config(lr=math.inf), ValueError, r"lr must be a finite number in \(0, 10\], got inf", id="lr-inf"),
    pytest.param(config(lr=1e30), ValueError, r"lr must be .* \(0, 10\], got 1e\+30", id="lr-1e30"),
    pytest.param(config(lr=0), ValueError, r"lr must be .* \(0, 10\]", id="lr-0"),
    pytest.param(config(lr=-0.1), ValueError, r"lr must be", id="lr-negative"),
    pytest.param(config(lr="0.2"), TypeError, r"lr must be a finite number", id="lr-str"),
    pytest.param(config(lagrangian_lr=math.nan), ValueError, r"lagrangian_lr .* got nan", id="lagrangian_lr-nan"),
    pytest.param(config(lagrangian_lr=0), ValueError, r"lagrangian_lr", id="lagrangian_lr-0"),
    pytest.param(config(warmup_fraction=1.5), ValueError, r"warmup_fraction .* in \[0, 1\]", id="warmup-1.5"),
    pytest.param(config(warmup_fraction=-0.1), ValueError, r"warmup_fraction", id="warmup-negative"),
    pytest.param(config(init_prob=0), ValueError, r"init_prob .* in \(0, 1\)", id="init_prob-0"),
    pytest.param(config(init_prob=1), ValueError, r"init_prob", id="init_prob-1"),
    pytest.param(config(layers=[1.7]), TypeError, r"layers\[0\] must be an int >= 0, got 1.7", id="layers-float"),
    pytest.param(config(layers=[-1]), ValueError, r"layers\[0\] must be an int >= 0, got -1", id="layers-negative"),
    pytest.param(config(layers=[]), ValueError, r"layers is empty", id="layers-empty"),
    pytest.param(config(layers="12"), TypeError, r"layers must be None or a tuple", id="layers-str"),
    pytest.param(config(weights="W_in"), TypeError, r"weights must be a tuple .* got the string 'W_in'; "
                 r"write \('W_in',\)", id="weights-str"),
    pytest.param(config(weights=("W_X",)), ValueError, r"weights holds unknown name\(s\) \['W_X'\]", id="weights-unknown"),
    pytest.param(config(hooks="attn.hook_z"), TypeError, r"hooks .* got the string", id="hooks-str"),
    pytest.param(config(hooks=("mlp.hook_pre",)), ValueError, r"hooks holds unknown", id="hooks-unknown"),
    pytest.param(config(weights=(), hooks=()), ValueError, r"nothing would be masked", id="nothing-masked"),
    pytest.param(config(granularity="neuron"), ValueError, r"granularity must be one of", id="granularity"),
    pytest.param(config(relaxation="gumbel"), ValueError, r"relaxation must be one of", id="relaxation"),
    pytest.param(config(relaxation_options={"temperature": 0}), ValueError,
                 r"straight_through temperature must be a finite number > 0, got 0", id="temperature-0"),
    pytest.param(config(relaxation="hard_concrete", relaxation_options={"beta": 0}), ValueError,
                 r"hard_concrete beta must be a finite number > 0", id="beta-0"),
    pytest.param(config(relaxation_options={"beta": 1}), ValueError, r"has no option\(s\) \['beta'\]",
                 id="relaxation-option-unknown"),
    pytest.param(config(relaxation_options="fast"), TypeError, r"relaxation_options must be a dict",
                 id="relaxation-options-str"),
    pytest.param(config(suppression="kl"), ValueError, r"suppression must be one of", id="suppression"),
    pytest.param(config(suppression_log_margin=0.5), ValueError, r"suppression_log_margin .* < 0",
                 id="log_margin-positive"),
    pytest.param(config(target_weight=0), ValueError, r"target_weight .* > 0", id="target_weight-0"),
    pytest.param(config(control_kg_weight=-1), ValueError, r"control_kg_weight .* >= 0", id="control_weight-neg"),
    pytest.param(config(control_lm_weight=math.inf), ValueError, r"control_lm_weight", id="lm_weight-inf"),
    pytest.param(config(expression_weight=math.nan), ValueError, r"expression_weight", id="expression-nan"),
    pytest.param(config(sparsity_start=-1), ValueError, r"sparsity_start", id="sparsity_start-neg"),
    pytest.param(config(teacher_top_k=0), ValueError, r"teacher_top_k must be an int >= 1, got 0", id="top_k-0"),
    pytest.param(config(teacher_top_k=1.5), TypeError, r"teacher_top_k", id="top_k-float"),
    pytest.param(config(teacher_max_gib=0), ValueError, r"teacher_max_gib .* > 0", id="max_gib-0"),
    pytest.param(config(control_val_fraction=0), ValueError, r"control_val_fraction .* \(0, 1\)", id="val_fraction-0"),
    pytest.param(config(lm_val_fraction=1.2), ValueError, r"lm_val_fraction", id="lm_val_fraction-1.2"),
    pytest.param(config(early_stop="yes"), TypeError, r"early_stop must be True or False", id="early_stop-str"),
    pytest.param(config(criteria={"target_top1": 0.1}), ValueError, r"criteria has unknown field",
                 id="criteria-unknown"),
    pytest.param(config(criteria={"sparsity_min": 2}), ValueError, r"Criteria.sparsity_min .* \[0, 1\]",
                 id="criteria-range"),
    pytest.param(config(criteria=0.5), TypeError, r"criteria must be a Criteria or a dict", id="criteria-float"),
    pytest.param(config(checkpoint_every=5), ValueError, r"checkpoint_every needs a checkpoint_dir",
                 id="checkpoint-no-dir"),
    pytest.param(config(checkpoint_every=-1), ValueError, r"checkpoint_every must be an int >= 0", id="checkpoint-neg"),
    pytest.param(config(checkpoint_dir=5), TypeError, r"checkpoint_dir must be a path", id="checkpoint_dir-int"),
    pytest.param(config(seed=-1), ValueError, r"seed must be an int in \[0, ", id="seed-negative"),
    pytest.param(config(seed=1.0), TypeError, r"seed must be an int", id="seed-float"),
    pytest.param(config(device="tpu"), ValueError, r"device must be one of \('auto', 'cpu', 'cuda', 'cuda:N', "
                 r"'mps'\), got 'tpu'", id="device-tpu"),
    pytest.param(config(device="cuda:x"), ValueError, r"device must be one of", id="device-cuda-x"),
    pytest.param(config(bf16=1), TypeError, r"bf16 must be True or False", id="bf16-int"),
    pytest.param(config(progress="no"), TypeError, r"progress must be True or False", id="progress-str"),
    pytest.param(lambda c: DiscoveryConfig.from_json({"stepz": 1}), ValueError, r"unknown config fields \['stepz'\]",
                 id="config-json-unknown"),
    pytest.param(lambda c: DiscoveryConfig.from_json([1]), TypeError, r"JSON object of its fields", id="config-json-list"),
    pytest.param(lambda c: DiscoveryConfig.preset("fast"), ValueError, r"unknown preset 'fast'", id="preset"),
    pytest.param(lambda c: discover(c.model, c.target, c.control, c.blocks, {"steps": 3}), TypeError,
                 r"config must be a DiscoveryConfig", id="config-dict"),
    # -- masks: relaxations, attaching, twice on one site ----------------------------------------------
    pytest.param(lambda c: attach_masks(c.model, weights="W_in"), TypeError, r"weights .* the string 'W_in'",
                 id="attach-weights-str"),
    pytest.param(lambda c: attach_masks(c.model, layers=[1.7]), TypeError, r"layers\[0\] must be an int",
                 id="attach-layers-float"),
    pytest.param(lambda c: attach_masks(c.model, layers=[5]), ValueError, r"layers \[5\] out of range: .* 0..1",
                 id="attach-layer-5"),
    pytest.param(lambda c: attach_masks(c.model, init_prob=1.5), ValueError, r"init_prob", id="attach-init_prob"),
    pytest.param(lambda c: attach_masks(c.model, ablation="median"), ValueError, r"ablation must be one of",
                 id="attach-ablation"),
    pytest.param(lambda c: attach_masks(c.model, ablation="mean"), ValueError, r"needs reference tokens",
                 id="attach-mean-no-reference"),
    pytest.param(lambda c: attach_masks(c.model, weights=(), hooks=("mlp.hook_post",), ablation="mean",
                                        reference=c.blocks.float()), TypeError, r"reference must hold integer",
                 id="attach-reference-float"),
    pytest.param(lambda c: attach_masks(c.model, mode="delete"), ValueError, r"unknown mode", id="attach-mode"),
    pytest.param(lambda c: StraightThroughSigmoid(temperature=0), ValueError, r"temperature must be .* > 0",
                 id="relaxation-temperature-0"),
    pytest.param(lambda c: HardConcrete(beta=0), ValueError, r"beta must be .* > 0", id="relaxation-beta-0"),
    pytest.param(lambda c: HardConcrete(gamma=0.1), ValueError, r"gamma must be .* < 0", id="relaxation-gamma"),
    pytest.param(lambda c: get_relaxation("straight_through", beta=1), ValueError, r"no option", id="relaxation-opt"),
    pytest.param(hooks_twice, RuntimeError, r"blocks.1.mlp.hook_post already carries a mask", id="hook-mask-twice"),
    pytest.param(subnetwork_hooks_twice, RuntimeError, r"blocks.1.attn.hook_z already carries a mask",
                 id="subnetwork-hook-twice"),
    pytest.param(weights_twice, RuntimeError, r"blocks.1.attn.W_Q already carries a mask", id="weight-mask-twice"),
    pytest.param(other_vocab, ValueError, r"different models: d_vocab: \d+ vs 1000", id="setop-other-model"),
    # -- data: token tensors, text, knowledge graphs -----------------------------------------------------
    pytest.param(lambda c: c.discover(lm=c.blocks - 1), ValueError, r"control_lm holds token id -1; valid ids are 0..",
                 id="lm-negative-id"),
    pytest.param(lambda c: c.discover(lm=c.blocks + 1000), ValueError, r"control_lm holds token id \d+; valid",
                 id="lm-id-too-big"),
    pytest.param(lambda c: c.discover(lm=c.blocks.float()), TypeError, r"control_lm must hold integer token ids",
                 id="lm-float"),
    pytest.param(lambda c: c.discover(lm=c.blocks.repeat(1, 2)), ValueError,
                 r"control_lm has rows of 32 tokens but the model reads at most n_ctx=16", id="lm-longer-than-ctx"),
    pytest.param(lambda c: c.discover(lm=c.blocks[0]), ValueError, r"\[batch, pos\]", id="lm-1d"),
    pytest.param(lambda c: c.discover(lm="the story went on " * 40), ValueError,
                 r"is not a file \(a str is read as a file path; to pass text itself, give a list", id="lm-long-string"),
    pytest.param(lambda c: c.discover(target=long_kg(c)), ValueError,
                 r"target has rows of 18 tokens \(e.g. 'the colour of thing0 .*\) but the model reads at most n_ctx=16",
                 id="kg-longer-than-ctx"),
    pytest.param(lambda c: c.discover(target=["a fact"]), TypeError, r"KnowledgeGraph or a KGBatch", id="target-list"),
    pytest.param(lambda c: c.discover(target=c.control), ValueError, r"also target triplets", id="target-is-control"),
    pytest.param(lambda c: lm_blocks(12, c.model.tokenizer, 8), TypeError, r"list of strings or a path",
                 id="lm_blocks-int"),
    pytest.param(lambda c: lm_blocks(["a"], c.model.tokenizer, 1), ValueError, r"block_len must be an int >= 2",
                 id="lm_blocks-len-1"),
    pytest.param(lambda c: lm_blocks(c.file("lm.bin", PNG), c.model.tokenizer, 8), ValueError,
                 r"lm.bin is not UTF-8 text .*expected text, one document per line", id="lm-file-binary"),
    pytest.param(lambda c: KnowledgeGraph.load(c.file("kg.jsonl", PNG)), ValueError,
                 r"kg.jsonl is not UTF-8 text \(byte 0x89 at offset 0\); expected a knowledge graph", id="kg-binary"),
    pytest.param(lambda c: KnowledgeGraph.load(c.file("kg.jsonl", '{"type": "graph", "format": "kcs_tl.kg/1"}\n{oops')),
                 ValueError, r"kg.jsonl:2: not JSON", id="kg-malformed"),
    pytest.param(lambda c: KnowledgeGraph.load(c.file("kg.jsonl", '{"type": "graph", "format": "kcs_tl.kg/1"}\n'
                                                                  '{"type": "triplet", "head": 5, "relation": "r", '
                                                                  '"tail": "t"}')),
                 ValueError, r"kg.jsonl:2: Triplet.head must be a str, got 5", id="kg-wrong-type"),
    pytest.param(lambda c: KnowledgeGraph.load(c.tmp / "nowhere.jsonl"), FileNotFoundError,
                 r"nowhere.jsonl does not exist; expected a file holding a knowledge graph", id="kg-missing"),
    pytest.param(lambda c: evaluate(c.model, "run/", c.target, c.control, c.blocks), TypeError,
                 r"subnetwork must be a Subnetwork", id="evaluate-path"),
    pytest.param(lambda c: evaluate(c.model, Subnetwork.load(c.saved()), c.target, c.control, c.blocks, n_random=-1),
                 ValueError, r"n_random must be an int >= 0", id="evaluate-n_random"),
    # -- saved subnetworks and checkpoints: files that do not hold what they should ---------------------
    pytest.param(lambda c: Subnetwork.load(c.saved(layer=99)), ValueError,
                 r"site blocks.99.mlp.W_in names layer 99, but the model it was found on has layers 0..1",
                 id="subnetwork-layer-99"),
    pytest.param(lambda c: Subnetwork.load(c.saved(lambda m: m["fingerprint"].update(n_layers=100), layer=99),
                                           model=c.model), ValueError,
                 r"found on a different model: n_layers: saved 100, model 2", id="subnetwork-layer-99-deeper-model"),
    pytest.param(lambda c: Subnetwork.load(c.saved(lambda m: m.pop("sites"))), ValueError,
                 r"subnetwork.json: field 'sites' must be a JSON list", id="subnetwork-no-sites"),
    pytest.param(lambda c: Subnetwork.load(c.saved(_meta_site("layer", "1"))), ValueError,
                 r"sites\[0\]: field 'layer' must be int, got '1'", id="subnetwork-layer-str"),
    pytest.param(lambda c: Subnetwork.load(c.saved(lambda m: m["sites"][0].pop("shape"))), ValueError,
                 r"sites\[0\]: missing field\(s\) \['shape'\]", id="subnetwork-site-field-missing"),
    pytest.param(lambda c: Subnetwork.load(c.saved(_meta_site("name", "W_gate")), model=c.model), ValueError,
                 r"site 'blocks.1.mlp.W_in' does not match its own fields \(layer 1, mlp.W_gate\)", id="subnetwork-site-inconsistent"),
    pytest.param(lambda c: Subnetwork.load(c.saved(lambda m: m.update(version=7))), ValueError,
                 r"subnetwork.json holds \('kcs_tl.subnetwork', 7\), expected format", id="subnetwork-version"),
    pytest.param(lambda c: Subnetwork.load(c.corrupt("subnetwork.json", PNG)), ValueError,
                 r"subnetwork.json is not UTF-8 text", id="subnetwork-json-binary"),
    pytest.param(lambda c: Subnetwork.load(c.corrupt("subnetwork.json", "{")), ValueError,
                 r"subnetwork.json: not JSON", id="subnetwork-json-malformed"),
    pytest.param(lambda c: Subnetwork.load(c.corrupt("subnetwork.json", "[]")), ValueError,
                 r"subnetwork.json holds list, expected format", id="subnetwork-json-list"),
    pytest.param(lambda c: Subnetwork.load(c.corrupt("masks.safetensors", PNG)), ValueError,
                 r"masks.safetensors is not a readable safetensors file", id="subnetwork-masks-binary"),
    pytest.param(lambda c: Subnetwork.load(c.saved(lambda m: m["sites"].append(dict(m["sites"][0], layer=0,
                                                                                  address="blocks.0.mlp.W_in")))),
                 ValueError, r"masks.safetensors lacks the mask\(s\) of \['blocks.0.mlp.W_in'\]",
                 id="subnetwork-mask-missing"),
    pytest.param(lambda c: Subnetwork.load(c.tmp), FileNotFoundError, r"is not a saved subnetwork",
                 id="subnetwork-missing"),
    pytest.param(lambda c: discover(c.model, c.target, c.control, c.blocks, DiscoveryConfig(**QUICK),
                                    resume=crafted_checkpoint(c)), ValueError,
                 r"evil.pt holds Python objects other than tensors .*refuses to load it, because unpickling",
                 id="checkpoint-pickled-callable"),
    pytest.param(lambda c: discover(c.model, c.target, c.control, c.blocks, DiscoveryConfig(**QUICK),
                                    resume=c.file("junk.pt", PNG)), ValueError,
                 r"junk.pt is not a readable kcs_tl checkpoint", id="checkpoint-binary"),
    pytest.param(lambda c: discover(c.model, c.target, c.control, c.blocks, DiscoveryConfig(**QUICK),
                                    resume=c.tmp / "none.pt"), FileNotFoundError, r"none.pt does not exist",
                 id="checkpoint-missing"),
    pytest.param(lambda c: c.discover(checkpoint_every=5, checkpoint_dir=str(c.file("f", "x") / "ck")),
                 NotADirectoryError, r"cannot create folder .*ck: a file is in the way", id="checkpoint_dir-under-a-file"),
    # -- the command line: exit status 2, one line, no traceback, before any search --------------------
    pytest.param(lambda c: c.cli("demo", "--device", "tpu", "--out", str(c.tmp / "o")), CLIExit,
                 r"^kcs-tl demo: error: DiscoveryConfig.device must be one of .* got 'tpu'", id="cli-device-tpu"),
    pytest.param(lambda c: c.cli("demo", "--steps", "0", "--out", str(c.tmp / "o")), CLIExit,
                 r"steps must be an int >= 1, got 0", id="cli-steps-0"),
    pytest.param(lambda c: c.cli("discover", "--model", "gpt-17", *c.kg_files(), "--out", str(c.tmp / "o")), CLIExit,
                 r"--model 'gpt-17' is unknown: .* `kcs-tl discover --list-models` lists them$", id="cli-unknown-model"),
    pytest.param(lambda c: c.cli("demo", "--out", str(c.file("out.txt", "mine"))), CLIExit,
                 r"out.txt is a file, not a folder", id="cli-out-is-a-file"),
    pytest.param(lambda c: c.cli("demo", "--out", str(c.file("f.txt", "mine") / "run")), CLIExit,
                 r"cannot create folder .*f.txt: a file is in the way", id="cli-out-under-a-file"),
    pytest.param(lambda c: c.cli("demo", "--out", "/proc/kcs_tl_out"), CLIExit, r"cannot write in folder /proc",
                 id="cli-out-proc", marks=pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")),
    pytest.param(lambda c: c.cli("demo", "--out", str(c.saved().parent)), CLIExit,
                 r"holds files that kcs_tl did not write", id="cli-out-foreign-files"),
    pytest.param(lambda c: c.cli("demo", "--out", str(c.saved()), "--overwrite", "--config",
                                 str(c.file("c.json", PNG))), CLIExit, r"c.json is not UTF-8 text", id="cli-config-binary"),
    pytest.param(lambda c: c.cli("demo", "--out", str(c.saved())), CLIExit,
                 r"already holds a result; .*--overwrite", id="cli-out-holds-a-result"),
    pytest.param(lambda c: c.cli("demo", "--config", str(c.file("c.json", '{"steps": 3,}')), "--out", str(c.tmp / "o")),
                 CLIExit, r"c.json: not JSON \(.* line 1 column \d+\)", id="cli-config-malformed"),
    pytest.param(lambda c: c.cli("demo", "--config", str(c.file("c.json", '{"steps": "10"}')), "--out", str(c.tmp / "o")),
                 CLIExit, r"--config .*c.json: DiscoveryConfig.steps must be an int >= 1, got '10'", id="cli-config-steps-str"),
    pytest.param(lambda c: c.cli("demo", "--config", str(c.file("c.json", '[1, 2]')), "--out", str(c.tmp / "o")),
                 CLIExit, r"JSON object of its fields", id="cli-config-list"),
    pytest.param(lambda c: c.cli("demo", "--config", str(c.file("c.json", '{"stpes": 3}')), "--out", str(c.tmp / "o")),
                 CLIExit, r"unknown config fields \['stpes'\]", id="cli-config-unknown-field"),
    pytest.param(lambda c: c.cli("discover", "--target", "nowhere.jsonl", "--control", "wordnet:control", "--lm", "x",
                                 "--out", str(c.tmp / "o")), CLIExit, r"'nowhere.jsonl' is neither a file nor wordnet",
                 id="cli-target-missing"),
    pytest.param(lambda c: c.cli("discover", "--target", str(c.file("t.jsonl", PNG)), "--control", "wordnet:control",
                                 "--lm", "x", "--out", str(c.tmp / "o")), CLIExit, r"t.jsonl is not UTF-8 text",
                 id="cli-target-binary"),
    pytest.param(lambda c: c.cli("discover", *c.kg_files()[:4], "--lm", str(c.tmp / "no.txt"),
                                 "--out", str(c.tmp / "o")), CLIExit, r"--lm '.*no.txt' is not a text file",
                 id="cli-lm-missing"),
    pytest.param(lambda c: c.cli("evaluate", *c.kg_files(), "--subnetwork", str(c.tmp / "none")), CLIExit,
                 r"none is not a saved subnetwork", id="cli-subnetwork-missing"),
    pytest.param(lambda c: c.cli("evaluate", *c.kg_files(), "--subnetwork", str(c.saved()), "--out", str(c.tmp),
                                 "--overwrite"), CLIExit, r"holds the --subnetwork being evaluated",
                 id="cli-evaluate-out-holds-the-subnetwork"),
    # -- model classes: HookedTransformer or TransformerBridge, nothing else (issue 12) ----------------
    pytest.param(lambda c: attach_masks(torch.nn.Linear(3, 3)), TypeError,
                 r"needs a TransformerLens model, got Linear\. Supported: .*HookedTransformer.*TransformerBridge",
                 id="model-class"),
    pytest.param(lambda c: evaluate(torch.nn.Linear(3, 3), Subnetwork.load(c.saved()), c.target, c.control, c.blocks),
                 TypeError, r"got Linear\. Supported: .*HookedTransformer.*TransformerBridge", id="evaluate-model-class"),
    pytest.param(lambda c: __import__("kcs_tl.zoo").zoo.load("tiny-world", model_class="bridged"), ValueError,
                 r"model_class must be one of \('hooked', 'bridge'\), got 'bridged'", id="zoo-model-class"),
    # -- architectures and the teacher cache (issue 15): refused before any forward pass ----------------
    pytest.param(config(teacher="topk"), ValueError, r"DiscoveryConfig.teacher must be one of \('auto', 'full', "
                 r"'fp16', 'top_k', 'on_the_fly'\), got 'topk'", id="teacher-unknown"),
    pytest.param(config(teacher_top_k=None), TypeError, r"teacher_top_k must be an int >= 1, got None",
                 id="top_k-none"),
    pytest.param(config(lm_chunk_max_gib=-1), ValueError, r"DiscoveryConfig.lm_chunk_max_gib must be a finite number > 0",
                 id="lm_chunk_max_gib-negative"),
    pytest.param(config(prepend_bos="no"), TypeError, r"DiscoveryConfig.prepend_bos must be True or False",
                 id="prepend_bos-str"),
    pytest.param(lambda c: c.discover(weights=("W_gate",)), ValueError,
                 r"DiscoveryConfig.weights: GPT-2 style model has no \['W_gate'\] \(features: .*MLP\); its maskable "
                 r"matrices are \('W_Q', 'W_K', 'W_V', 'W_O', 'W_in', 'W_out'\)", id="weights-not-in-architecture"),
    pytest.param(lambda c: attach_masks(c.model, weights=("W_in", "W_gate")), ValueError,
                 r"^weights: GPT-2 style model has no \['W_gate'\]", id="attach-weights-not-in-architecture"),
    pytest.param(lambda c: c.discover(layers=(1, 7)), ValueError,
                 r"DiscoveryConfig.layers \[7\] out of range: this model has layers 0..1", id="layers-out-of-range"),
    pytest.param(lambda c: c.discover(teacher="full", teacher_max_gib=1e-6), ValueError,
                 r"teacher='full': caching the original model's outputs at [\d,]+ positions \(vocabulary \d+\) "
                 r"would take .* GiB > teacher_max_gib=1e-06; use teacher='auto'", id="teacher-too-big"),
    pytest.param(lambda c: attach_masks(moe_model()), ValueError,
                 r"mixture-of-experts models \(num_experts=4\) are not supported", id="attach-moe"),
]


@pytest.fixture(scope="module")
def toy():
    return toy_world()


@pytest.fixture(autouse=True)
def one_thread():
    """Searches here are tiny: one torch thread avoids oversubscribing a shared CPU (see test_benchmarks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_state(model) -> dict:
    """Everything a failed call must leave as it was: weights (bits), names, flags, hooks, device."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "parametrized": [n for n, m in model.named_modules() if parametrize.is_parametrized(m)],
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()},
        "training": model.training, "device": str(next(model.parameters()).device),
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert {k: v for k, v in before.items() if k != "state"} == {k: v for k, v in after.items() if k != "state"}


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_input(call, error, message, toy, tmp_path, monkeypatch):
    """A clear one-line error naming the argument or file; the model is left exactly as it was."""
    monkeypatch.setattr(cli, "discover", no_search)
    c = Context(toy, tmp_path)
    before = model_state(c.model)
    with pytest.raises(error, match=message) as info:
        call(c)
    text = str(info.value)
    assert "\n" not in text and len(text) < 500, text
    assert_same(before, model_state(c.model))
    assert not (tmp_path / "pwned").exists()  # the crafted checkpoint ran nothing


# -- a failed start leaves the model exactly as it was -------------------------------------------


def _fail(*args, **kwargs):
    raise RuntimeError("injected")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


FAILURES = {
    # where Search.__init__ (or the run after it) fails: (object, attribute, replacement)
    "prepare": (search, "prepare", _fail),
    "prepare-ctrl-c": (search, "prepare", _interrupt),
    "lagrangian": (search, "Lagrangian", _fail),
    "attach": (masked_model, "_freeze", _fail),
    "optimiser": (torch.optim, "Adam", _fail),
    "warm-up": (torch.optim.lr_scheduler, "LambdaLR", _fail),
    "step": (search, "step_losses", _fail),
    "validation": (search, "validation_scores", _fail),
}


@pytest.mark.parametrize("where", FAILURES)
def test_a_failed_search_leaves_the_model_exactly_as_it_was(where, monkeypatch):
    model, target, control, blocks = toy_world()
    model.blocks[1].attn.W_Q.requires_grad_(False)  # the user's own flags come back too
    before = model_state(model)
    obj, name, replacement = FAILURES[where]
    monkeypatch.setattr(obj, name, replacement)
    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        discover(model, target, control, blocks, DiscoveryConfig(**QUICK))
    assert_same(before, model_state(model))
    monkeypatch.undo()
    attach_masks(model, layers=[1]).detach()  # no leftover mask: the model can be masked again
    assert_same(before, model_state(model))


def test_a_config_edited_after_construction_is_checked_again_before_anything_changes(toy):
    model, target, control, blocks = toy
    before = model_state(model)
    cfg = DiscoveryConfig(**QUICK)
    cfg.lr = math.inf
    with pytest.raises(ValueError, match="lr must be a finite number in"):
        Search(model, target, control, blocks, cfg)
    assert_same(before, model_state(model))


@pytest.mark.parametrize("order", ["first-attached-first", "last-attached-first"])
def test_two_masked_models_detached_in_either_order_leave_parameters_trainable(order, toy):
    model = toy[0]
    before = model_state(model)
    a = MaskedModel(model, weights=("W_in",), layers=[1])
    b = MaskedModel(model, weights=("W_out",), layers=[1])
    assert not any(p.requires_grad for p in model.parameters())
    first, second = (a, b) if order == "first-attached-first" else (b, a)
    first.detach()
    assert not any(p.requires_grad for p in model.parameters())  # the other one still trains masks
    second.detach()
    assert_same(before, model_state(model))


# -- silent wrong results: non-finite values stop the search at its last finite checkpoint ------------


@pytest.mark.parametrize("what", ["gradients", "values"])
def test_non_finite_values_stop_at_the_last_finite_checkpoint(what, toy, monkeypatch):
    model, target, control, blocks = toy
    cfg = DiscoveryConfig(**QUICK | {"steps": 12, "eval_every": 4, "warmup_fraction": 0.0})
    four_steps = discover(model, target, control, blocks, dataclasses.replace(cfg, steps=4)).subnetwork
    losses = search.step_losses

    def go_non_finite_at_step_6(masked, data, cfg_, step, gen, lagrangian):
        out = losses(masked, data, cfg_, step, gen, lagrangian)
        score = masked.score("blocks.1.attn.W_Q")
        if step == 6 and what == "gradients":  # as a relaxation temperature near 0 would do
            score.register_hook(lambda g: g * math.nan)
        if step == 6 and what == "values":
            with torch.no_grad():
                score[0, 0, 0] = math.inf
        return out

    monkeypatch.setattr(search, "step_losses", go_non_finite_at_step_6)
    with pytest.warns(RuntimeWarning, match=rf"non-finite {what} at step [68] in mask scores of blocks.1.attn.W_Q "
                                            r"\(\d+ of 1024 values\); stopped, the result is the best checkpoint "
                                            r"before it \(step 4\)"):
        found = discover(model, target, control, blocks, cfg)
    assert found.best_step == 4 and "non-finite" in found.stopped
    assert all(torch.equal(found.subnetwork.masks[a], four_steps.masks[a]) for a in four_steps.masks)
    assert 0 < found.subnetwork.sparsity() < 1  # never the empty "100% sparse" mask


def test_same_seed_runs_are_bit_identical(toy):
    model, target, control, blocks = toy
    cfg = DiscoveryConfig(**QUICK | {"steps": 6, "eval_every": 3})
    a, b = (discover(model, target, control, blocks, cfg) for _ in range(2))
    assert all(torch.equal(a.subnetwork.masks[k], b.subnetwork.masks[k]) for k in a.subnetwork.masks)
    assert a.history.equals(b.history)
    c = discover(model, target, control, blocks, dataclasses.replace(cfg, seed=1))
    assert not c.history["loss"].equals(a.history["loss"])


def test_every_config_field_is_validated():
    assert set(FIELD_CHECKS) == {f.name for f in dataclasses.fields(DiscoveryConfig)}


# -- the command line keeps what it found ------------------------------------------------------------


def test_a_second_ctrl_c_during_the_evaluation_keeps_the_found_subnetwork(toy, tmp_path, monkeypatch, capsys):
    model, target, control, blocks = toy
    monkeypatch.setattr(cli_discover, "evaluate", _interrupt)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        cli_discover.run(model, target, control, blocks, DiscoveryConfig(**QUICK | {"steps": 2, "eval_every": 2}), out,
                         False)
    assert "the subnetwork found is saved in" in capsys.readouterr().err
    Subnetwork.load(out / "subnetwork", model=model)
    assert sorted(p.name for p in out.iterdir()) == [".kcs_tl", "history.csv", "subnetwork"]
    monkeypatch.setattr(cli_demo, "command", _interrupt)
    with pytest.raises(SystemExit) as info:  # the command line exits with 130, without a traceback
        cli.main(["demo"])
    assert info.value.code == 130 and capsys.readouterr().err == "kcs-tl demo: interrupted\n"
