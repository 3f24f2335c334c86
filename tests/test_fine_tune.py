"""The ``fine_tune`` protocol: RETFound's recipe on ``random_init``, through the run engine.

It beats the linear probe of the same encoder on the embedded synth_dr; a run killed
with SIGKILL resumes from its last epoch checkpoint and ends with the same predictions as an
uninterrupted one; the trainer never sees test labels and selects on val; a finished run's
checkpoint key is reused, never trained again; layer-wise lr decay and the schedule match a
hand computation; a model without the declaration is not applicable, and bad options fail
at planning with one line naming the task file.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fundbench
from fundbench import RunConfig
from fundbench.api.definitions import TaskDefinition, read_yaml
from fundbench.api.errors import ConfigError
from fundbench.api.hookspecs import hookimpl
from fundbench.data.datasets import load_dataset
from fundbench.eval import metrics
from fundbench.eval.cells import Context
from fundbench.eval.fine_tuning import optim
from fundbench.eval.fine_tuning.recipe import PRESETS, recipe_from_options
from fundbench.eval.fine_tuning.trainer import fine_tune
from fundbench.eval.protocols.fine_tune import checkpoint_key, fine_tune_cells
from fundbench.host.loading import Host
from fundbench.host.registry import PluginInfo
from fundbench.runs.records import iter_records, load_predictions

HERE = Path(__file__).parent
#: a small synthetic glaucoma set (120 images of 96 px) for the quick runs
SMALL = "ft_synth_small"
#: the quick recipe: the tiny preset, 5 epochs of 2 steps on 32 images at 32 px, decoded
#: in-process
QUICK = {"preset": "tiny", "epochs": 5, "max_train_images": 32, "num_workers": 0}


class FineTunePlugin:
    """The tests' definitions: the small dataset and fine-tuning tasks."""

    FUNDBENCH_CONTRACT = "2.0"

    def __init__(self, tasks: dict[str, dict] | None = None) -> None:
        self.tasks = tasks or {}

    @hookimpl
    def fundbench_register_datasets(self, register):
        register(
            SMALL,
            {
                "id": SMALL,
                "modality": "cfp",
                "classes": ["normal", "glaucoma"],
                "format": "synthfundus",
                "options": {"family": "glaucoma", "n_patients": 60, "seed": 12, "image_size": 96},
            },
        )

    @hookimpl
    def fundbench_register_tasks(self, register):
        for name, options in {"ft_quick": QUICK, **self.tasks}.items():
            if isinstance(options, TaskDefinition):
                register(name, options)
                continue
            task = {"name": name, "protocol": "fine_tune", "adapters": ["full"]}
            register(name, {**task, "bootstrap": 20, "options": options})


def make_host(tasks: dict | None = None) -> Host:
    host = Host().load_entry_points()
    assert host.add_plugin(FineTunePlugin(tasks), PluginInfo("ft", "ft-tests", "0")), host.problems
    return host


def quick_run(out: Path, cache: Path, *, task: str = "ft_quick", tasks: dict | None = None):
    """``fundbench.run`` of ``task`` for random_init at 32 px on the small set."""
    config = RunConfig(
        models=["random_init"],
        datasets=[SMALL],
        tasks=[task],
        out=out,
        cache=cache,
        bootstrap=20,
        report=False,
        model_options={"random_init": {"resolution": 32}},
    )
    return fundbench.run(config, make_host(tasks))


def fine_tune_record(out: Path, task: str = "ft_quick") -> dict:
    (record,) = [r for r in iter_records(out) if r["cell"]["task"] == task]
    return record


def probs_of(record: dict) -> np.ndarray:
    return load_predictions(record).probs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted quick run: (results folder, feature cache, record)."""
    root = tmp_path_factory.mktemp("ft_reference")
    quick_run(root / "out", root / "cache")
    return root / "out", root / "cache", fine_tune_record(root / "out")


@pytest.mark.slow
def test_tiny_preset_improves_over_the_linear_probe_of_random_init(tmp_path):
    # synth_dr (5 grades, 180 training images) at 64 px: about 2 s per epoch on 2 CPUs
    out = tmp_path / "out"
    config = RunConfig(
        models=["random_init"],
        datasets=["synth_dr"],
        tasks=["fine_tune_tiny", "linear_probe"],
        out=out,
        cache=tmp_path / "cache",
        bootstrap=50,
        report=False,
        model_options={"random_init": {"resolution": 64}},
    )
    summary = fundbench.run(config, make_host())
    assert summary.computed == 3 and summary.not_applicable == 0
    frame = fundbench.load_results(out)
    auroc = frame[frame["metric"] == "auroc"].set_index(["task", "adapter"])["value"]
    fine_tuned = auroc[("fine_tune_tiny", "full")]
    probes = auroc[("linear_probe", "tuned")], auroc[("linear_probe", "paper")]
    assert fine_tuned > max(probes) + 0.05, (fine_tuned, probes)
    record = fine_tune_record(out, "fine_tune_tiny")
    details = record["details"]
    assert details["preset"] == "tiny" and details["epochs_run"] == details["epochs"] == 10
    assert record["cell"]["adapter"] == "full" and record["n_train"] == details["n_train"] > 100
    assert "post_hoc" in record  # temperature and thresholds chosen on val, as the others
    # timm's ResNet-18 groups: the stem, 8 blocks, the head on top
    scales = sorted({g["lr_scale"] for g in details["lr_groups"]["groups"]})
    assert np.allclose(scales, [0.65**k for k in range(9, -1, -1)])


KILLED_RUN = """
import sys
sys.path.insert(0, {here!r})
from pathlib import Path
import test_fine_tune as t
t.quick_run(Path({out!r}), Path({cache!r}), task="ft_workers", tasks={{"ft_workers": {options!r}}})
"""


@pytest.mark.slow
def test_resumes_after_kill_9_with_the_predictions_of_an_uninterrupted_run(tmp_path, reference):
    _, _, ref_record = reference
    # the same recipe decoded by a worker process (the reference decodes in-process): the
    # augmentation is seeded per image, so the numbers do not depend on who decodes
    options = {**QUICK, "num_workers": 1}
    out, cache = tmp_path / "out", tmp_path / "cache"
    script = KILLED_RUN.format(here=str(HERE), out=str(out), cache=str(cache), options=options)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(cache.glob(".protocols/fine_tune/*/last.pt")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no epoch checkpoint after 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("records/**/*.json")), "killed before any record"

    quick_run(out, cache, task="ft_workers", tasks={"ft_workers": options})
    record = fine_tune_record(out, "ft_workers")
    details = record["details"]
    assert details["resumed_from_epoch"] >= 1 and not details["cached"]
    assert details["epochs_run"] == details["epochs"] - details["resumed_from_epoch"]
    assert details["checkpoint"] == ref_record["details"]["checkpoint"]
    assert np.array_equal(probs_of(record), probs_of(ref_record))
    assert details["val_auroc"] == ref_record["details"]["val_auroc"]
    assert not list(cache.glob(".protocols/fine_tune/*/last.pt"))  # done: resume state gone


def test_a_finished_key_is_never_trained_again_and_options_change_the_key(tmp_path, reference):
    _, ref_cache, ref_record = reference
    out = tmp_path / "out"
    shutil.copytree(ref_cache, tmp_path / "cache")  # records gone, checkpoints kept
    quick_run(out, tmp_path / "cache")
    details = fine_tune_record(out)["details"]
    assert details["cached"] and details["epochs_run"] == 0
    assert details["checkpoint"] == ref_record["details"]["checkpoint"]
    assert np.array_equal(probs_of(fine_tune_record(out)), probs_of(ref_record))

    ctx = SimpleNamespace(
        identity={"weights_digest": "w", "dataset_manifest_digest": "m", "prompts_digest": "p"},
        dataset=SimpleNamespace(id="d", classes=("a", "b")),
    )
    tiny = recipe_from_options({"preset": "tiny"}, "t.yaml")
    key = checkpoint_key(ctx, tiny, 0, {"train": "x"})
    assert checkpoint_key(ctx, dataclasses.replace(tiny, epochs=11), 0, {"train": "x"}) != key
    assert checkpoint_key(ctx, tiny, 1, {"train": "x"}) != key  # the seed
    assert checkpoint_key(ctx, tiny, 0, {"train": "y"}) != key  # the training images
    # what does not change the weights does not change the key
    assert checkpoint_key(ctx, dataclasses.replace(tiny, num_workers=3), 0, {"train": "x"}) == key
    ctx.identity["prompts_digest"] = "another prompt file"
    assert checkpoint_key(ctx, tiny, 0, {"train": "x"}) == key


def _context(dataset, model, work_dir: Path) -> Context:
    def no_features():
        raise AssertionError("fine_tune read the frozen embeddings")

    return Context(
        "random_init",
        dataset,
        logit_scale=100.0,
        no_text_reason="no text tower",
        load_features=no_features,
        load_text_weights=no_features,
        load_model=lambda: model,
        work_dir=work_dir,
        identity={"weights_digest": model.weights_digest, "dataset_manifest_digest": "same"},
    )


def test_never_reads_test_labels_and_selects_on_val(tmp_path):
    # structurally: the trainer takes train and val with labels, test as paths only
    assert "test_paths" in inspect.signature(fine_tune).parameters
    assert not any(
        "test" in p and p != "test_paths" for p in inspect.signature(fine_tune).parameters
    )

    from fundbench_random_init.model import RandomInitModel

    model = RandomInitModel(resolution=32)
    dataset = load_dataset(SMALL, host=make_host())
    test = (dataset.table["split"] == "test").to_numpy()
    flipped = dataset.table.copy()
    flipped.loc[test, "label"] = 1 - flipped.loc[test, "label"]  # every test label wrong
    task = TaskDefinition.from_mapping(
        {"name": "q", "protocol": "fine_tune", "adapters": ["full"], "options": QUICK}
    )
    outcomes = []
    for i, table in enumerate((dataset.table, flipped)):
        ctx = _context(dataclasses.replace(dataset, table=table), model, tmp_path / str(i))
        ((_, compute),) = fine_tune_cells(ctx, task)
        rng = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
        outcomes.append(compute())
        # the process's random state is left as it was found
        assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
        assert np.array_equal(np.random.get_state()[1], rng[2])
    original, permuted = outcomes
    assert np.array_equal(original.probs, permuted.probs)
    assert original.details["selected_epoch"] == permuted.details["selected_epoch"]
    assert original.details["val_auroc"] == permuted.details["val_auroc"]
    assert original.probs.shape == (int(test.sum()), 2)

    # the selected epoch is the first best val AUROC, and val_probs are that epoch's
    details, val_y = original.details, original.features.val_y
    history = details["val_auroc"]
    assert details["selected_epoch"] == int(np.argmax(history)) + 1
    chosen = metrics.compute_metrics(val_y, original.val_probs, n_classes=2)["auroc"]
    assert chosen == pytest.approx(history[details["selected_epoch"] - 1])
    assert "val" in details["selection"]


def test_mixup_and_cutmix_options_train_on_soft_targets_reproducibly(tmp_path):
    from fundbench_random_init.model import RandomInitModel

    model = RandomInitModel(resolution=32)
    dataset = load_dataset(SMALL, host=make_host())
    options = {**QUICK, "epochs": 2, "mixup": 0.8, "cutmix": 1.0}
    task = TaskDefinition.from_mapping(
        {"name": "q", "protocol": "fine_tune", "adapters": ["full"], "options": options}
    )
    outcomes = []
    for i in range(2):
        ((_, compute),) = fine_tune_cells(_context(dataset, model, tmp_path / str(i)), task)
        outcomes.append(compute())
    first, second = outcomes
    assert first.details["mixup"] and first.details["loss"].startswith("SoftTargetCrossEntropy")
    assert np.array_equal(first.probs, second.probs)  # mixup's draws are seeded per step
    assert first.details["train_loss"] == second.details["train_loss"]


def test_layer_decay_groups_match_retfounds_rule_on_a_timm_vit():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    head = torch.nn.Linear(vit.num_features, 3)
    groups, summary = optim.param_groups(vit, head, weight_decay=0.05, layer_decay=0.65)
    top = len(vit.blocks) + 1  # RETFound: num_layers = blocks + 1, the top layer's id

    def layer_id(name: str) -> int:  # util/lr_decay.py get_layer_id_for_vit, by hand
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return top

    group_of = {id(p): g for g in groups for p in g["params"]}
    no_decay = vit.no_weight_decay()
    for name, param in vit.named_parameters():
        group = group_of[id(param)]
        assert group["lr_scale"] == pytest.approx(0.65 ** (top - layer_id(name))), name
        expected_wd = 0.0 if param.ndim == 1 or name in no_decay else 0.05
        assert group["weight_decay"] == expected_wd, name
    assert group_of[id(head.weight)]["lr_scale"] == 1.0
    assert group_of[id(head.weight)]["weight_decay"] == 0.05
    assert group_of[id(head.bias)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(vit.parameters())) + 2
    assert "group_matcher" in summary["grouping"]

    # a module without group_matcher: one rate for all
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    plain_groups, plain_summary = optim.param_groups(
        plain, head, weight_decay=0.05, layer_decay=0.65
    )
    assert {g["lr_scale"] for g in plain_groups} == {1.0}
    assert "no layer decay" in plain_summary["grouping"]


def test_warm_up_then_half_cosine_per_iteration():
    paper = PRESETS["paper"]  # peak = 5e-3 * 16 / 256, 10 warm-up epochs of 50
    peak, low = 5e-3 * 16 / 256, 1e-6
    assert paper.abs_lr == pytest.approx(3.125e-4)
    assert optim.lr_at(0.0, paper) == 0.0
    assert optim.lr_at(2.5, paper) == pytest.approx(peak * 0.25)
    assert optim.lr_at(10.0, paper) == pytest.approx(peak)
    assert optim.lr_at(30.0, paper) == pytest.approx(low + (peak - low) * 0.5)
    t = 40.0 + 3 / 7  # step 3 of 7 of epoch 40
    expected = low + (peak - low) * 0.5 * (1 + math.cos(math.pi * (t - 10) / 40))
    assert optim.lr_at(t, paper) == pytest.approx(expected)
    assert optim.lr_at(50.0, paper) == pytest.approx(low)

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(
        [{"params": [model.weight], "lr_scale": 0.5}, {"params": [model.bias], "lr_scale": 1.0}]
    )
    optim.set_lr(optimizer, 1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [5e-4, 1e-3]


def test_model_without_the_declaration_is_not_applicable(toy_host, tmp_path):
    toy_host.add_plugin(FineTunePlugin(), PluginInfo("ft", "ft-tests", "0"))
    config = RunConfig(
        models=["toy_clip"],
        datasets=["toy_csv"],
        tasks=["ft_quick"],
        out=tmp_path / "out",
        bootstrap=20,
        report=False,
    )
    summary = fundbench.run(config, toy_host)
    assert summary.not_applicable == 1 and summary.computed == 0
    (record,) = iter_records(tmp_path / "out")
    assert record["status"] == "not_applicable"
    assert "trainable image module" in record["reason"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": -1}, "options.epochs must be an integer >= 1, got -1"),
        ({"epoch": 3}, "options.epoch is not a fine_tune option; did you mean 'epochs'?"),
        ({"preset": "huge"}, "options.preset must be paper or tiny"),
        ({"layer_decay": 0}, "options.layer_decay must be a number > 0 and <= 1"),
    ],
)
def test_bad_options_fail_at_planning_naming_the_file_and_key(tmp_path, options, message):
    path = tmp_path / "bad_fine_tune.yaml"
    path.write_text(
        "name: bad_ft\nprotocol: fine_tune\nadapters: [full]\noptions: "
        + repr(options).replace("'", '"')
        + "\n"
    )
    task = TaskDefinition.from_mapping(read_yaml(path), str(path))
    with pytest.raises(ConfigError) as failure:
        quick_run(tmp_path / "out", tmp_path / "cache", task="bad_ft", tasks={"bad_ft": task})
    text = str(failure.value)
    assert str(path) in text and message in text and "\n" not in text
    assert not (tmp_path / "cache" / ".protocols").exists()  # nothing was trained


def test_without_timm_planning_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a)
    )
    task = TaskDefinition.from_mapping(
        {"name": "q", "protocol": "fine_tune", "adapters": ["full"]}, "q.yaml"
    )
    with pytest.raises(ConfigError, match=r"q\.yaml: .*pip install 'fundbench\[finetune\]'"):
        list(fine_tune_cells(SimpleNamespace(), task))


class _TinyFineTunable(fundbench.Model):
    """A 4-d conv encoder whose trainable module is a copy, or (``share``) itself."""

    name = "tiny_fine_tunable"
    embed_dim = 4

    def __init__(self, share: bool = False) -> None:
        self.preprocess_config = fundbench.PreprocessConfig(
            resolution=16, mode="stretch", mean=None, std=None
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            conv = torch.nn.Conv2d(3, 4, 3)
        self.net = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.net.eval().requires_grad_(False)
        self.share = share

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)

    def trainable_image_module(self, *, drop_path_rate: float = 0.0) -> torch.nn.Module:
        import copy

        module = self.net if self.share else copy.deepcopy(self.net)
        return module.train().requires_grad_(True)


@pytest.mark.parametrize("share", [False, True])
def test_conformance_kit_checks_the_trainable_module(share):
    from fundbench.testing import model_checks, run_checks

    results = {r.name: r for r in run_checks(model_checks(lambda: _TinyFineTunable(share)))}
    result = results["trainable-module"]
    if share:
        assert not result.passed and "shares" in result.message
    else:
        assert result.passed, result.message
