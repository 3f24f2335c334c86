"""The run's protocol checks (issue 15): nothing is selected on test, and no patient is in two
splits; each refusal is one line naming the task or dataset."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
from toy_data import make_toy_csv_dataset

from fundbench import RunConfig, hookimpl, run
from fundbench.api.definitions import TaskDefinition
from fundbench.api.errors import ConfigError, DataError
from fundbench.api.spec import ProtocolSpec, SpecError
from fundbench.data.datasets import load_dataset
from fundbench.host.registry import PluginInfo
from fundbench.runs.protocol_check import check_patient_splits, check_selection, selection_of


def _task(**extra) -> TaskDefinition:
    data = {"name": "leaky", "protocol": "linear_probe", "adapters": ["tuned"], **extra}
    return TaskDefinition.from_mapping(data, "tasks/leaky.yaml")


def test_the_built_in_protocols_select_nothing_on_test(toy_host):
    tasks = [TaskDefinition.from_mapping(e.obj) for e in toy_host.tasks]
    assert {t.protocol for t in tasks} >= {"zero_shot", "few_shot", "linear_probe"}
    check_selection(tasks, toy_host)
    by_protocol = {t.protocol: selection_of(t, toy_host) for t in tasks}
    post_hoc = {"temperature": "val", "threshold": "val"}  # fundbench.eval.post_hoc
    assert by_protocol["linear_probe"] == {"C": "train", **post_hoc}
    assert by_protocol["zero_shot"] == by_protocol["few_shot"] == post_hoc


def test_a_task_that_selects_on_test_is_refused_in_one_line(toy_host):
    with pytest.raises(ConfigError) as refused:
        check_selection([_task(selection={"threshold": "test"})], toy_host)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("task 'leaky' (tasks/leaky.yaml) selects threshold on the test")
    assert "declared by its 'selection'" in message and "{threshold: val}" in message
    check_selection([_task(selection={"threshold": "val"})], toy_host)  # val is fine


class _LeakyProtocol:
    """A plugin protocol declaring a temperature fitted on test, and a task using it."""

    FUNDBENCH_CONTRACT = "2.0"

    @hookimpl
    def fundbench_register_protocols(self, register):
        register(
            "calibrated",
            "fundbench.eval.cells:linear_probe_cells",
            adapters=("paper",),
            selects_on={"temperature": "test"},
        )

    @hookimpl
    def fundbench_register_tasks(self, register):
        register(
            "calibrated", {"name": "calibrated", "protocol": "calibrated", "adapters": ["paper"]}
        )


def test_a_protocol_declaring_test_refuses_the_run_before_any_record(toy_host, tmp_path):
    assert toy_host.add_plugin(_LeakyProtocol(), PluginInfo("leaky", "leaky-tests", "1.0"))
    out = tmp_path / "out"
    config = RunConfig(models=["toy_clip"], suite="toy", tasks=["calibrated"], out=out)
    with pytest.raises(
        ConfigError,
        match=r"task 'calibrated' .*declared by protocol 'calibrated'.*must choose it on val",
    ):
        run(config, toy_host)
    assert not (out / "records").exists()
    # a task may override what its protocol declares (e.g. one that reads task.selection)
    task = TaskDefinition.from_mapping(toy_host.tasks.get("calibrated").obj)
    check_selection([replace(task, selection={"temperature": "val"})], toy_host)


@pytest.mark.parametrize(
    ("selection", "culprit"),
    [
        ({"threshold": "validation"}, "selection.threshold must be one of train, val, test"),
        (["threshold"], "key 'selection' must be a mapping"),
        ({"": "val"}, "selection keys name what is selected"),
    ],
)
def test_a_bad_selection_is_one_config_error(selection, culprit):
    with pytest.raises(ConfigError, match="tasks/leaky.yaml") as refused:
        _task(selection=selection)
    assert culprit in str(refused.value) and "\n" not in str(refused.value)


def test_a_protocol_spec_checks_its_selects_on():
    spec = ProtocolSpec.build("p", {"selects_on": {"C": "train"}}, "plugin x")
    assert spec.selects_on == {"C": "train"}
    with pytest.raises(SpecError, match=r"plugin x: selects_on\['C'\] is 'tst'"):
        ProtocolSpec.build("p", {"selects_on": {"C": "tst"}}, "plugin x")


class _StraddlingDataset:
    FUNDBENCH_CONTRACT = "2.0"

    def __init__(self, folder):
        self.folder = folder

    @hookimpl
    def fundbench_register_datasets(self, register):
        register(
            "straddling",
            {
                "id": "straddling",
                "modality": "cfp",
                "classes": ["red", "green", "blue"],
                "format": "csv",
                "options": {
                    "path": str(self.folder),
                    "columns": {"path": "image", "label": "diagnosis", "patient": "patient_id"},
                },
            },
        )


def test_a_dataset_with_a_patient_in_two_splits_is_refused(toy_host, tmp_path):
    folder = make_toy_csv_dataset(tmp_path / "data", n_patients=12)
    labels = pd.read_csv(folder / "labels.csv")
    patient = labels["patient_id"].str[1:].astype(int)
    labels["split"] = ["train" if p < 8 else "test" for p in patient]
    labels.loc[(labels["patient_id"] == "P3") & (labels["eye"] == "OS"), "split"] = "test"
    labels.to_csv(folder / "labels.csv", index=False)
    assert toy_host.add_plugin(_StraddlingDataset(folder), PluginInfo("s", "s-tests", "1.0"))

    with pytest.raises(DataError) as refused:
        check_patient_splits([load_dataset("straddling", host=toy_host)])
    message = str(refused.value)
    assert "\n" not in message and message.startswith("dataset 'straddling' (")
    assert "1 patient(s) appear in more than one split, e.g. 'P3' in ['test', 'train']" in message
    out = tmp_path / "out"
    config = RunConfig(models=["toy_clip"], datasets=["straddling"], tasks=["zero_shot"], out=out)
    with pytest.raises(DataError, match="dataset 'straddling'.*'P3'"):
        run(config, toy_host)
    assert not (out / "records").exists()
