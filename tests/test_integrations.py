"""A job's ``integrations`` (Weights & Biases) and its TensorBoard events, through the official client.

One job trains the tiny model with a ``wandb`` integration on a worker without ``WANDB_API_KEY`` (and
``WANDB_MODE=offline`` passed through to the training child): the job echoes the integration as the spec shows
it, and its results carry, after the CSV, ``tensorboard.tar.gz`` (read back with TensorBoard's own event reader:
every step's training loss) and ``wandb-offline-run.tar.gz`` (the offline run folder ``wandb sync`` uploads; its
``.wandb`` log read back with wandb's datastore: the run's project, name, tags and the logged losses). Invalid
integrations are 400s naming the field.

The operator's W&B key is never a tenant's to aim: the gateway has ``integrations.wandb_entity`` configured (a
create naming another entity is a 400) and the worker a ``WANDB_ENTITY`` / ``WANDB_PROJECT`` of its own, which the
tenant's offline run must not pick up; the unit tests run the Tracker with a key in the environment and
``wandb.init`` captured: online only to the configured entity, into ``<org id>-<project>``."""

from __future__ import annotations

import csv
import io
import os
import struct
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.finetune_support import TINY, chat_jsonl, gateway_env, qa_pairs, upload, wait_for
from tests.support import LiveGateway, SpecRecorder

BLOCK = 32 * 1024
OPERATOR = "operator-team"  # integrations.wandb_entity of the module's gateway
WANDB = {"project": "tunegate-tests", "name": "tiny run", "entity": None, "tags": ["ci", "tiny"]}


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("integrations")
    gateway = LiveGateway(
        data_dir,
        f"sqlite:///{data_dir / 'tunegate.db'}",
        **gateway_env(
            tiny_model,
            WANDB_MODE="offline",
            WANDB_SILENT="true",
            TUNEGATE_INTEGRATIONS__WANDB_ENTITY=OPERATOR,
            WANDB_ENTITY=OPERATOR,
            WANDB_PROJECT="operator-private",
        ),
    )
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def secret(gw: LiveGateway) -> str:
    return gw.new_org_key("tracked")[2]


@pytest.fixture(scope="module")
def client(gw: LiveGateway, secret: str) -> openai.OpenAI:
    return gw.client(secret)


@pytest.fixture(scope="module")
def training(client: openai.OpenAI) -> str:
    return upload(client, chat_jsonl(qa_pairs(10)))


@pytest.fixture(scope="module")
def finished(client: openai.OpenAI, training: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training,
        integrations=[{"type": "wandb", "wandb": WANDB}],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}},
    )
    done = wait_for(client, job.id, ("succeeded",), timeout=300)
    folder = tmp_path_factory.mktemp("results")
    names = {}
    for file_id in done.result_files:
        meta = client.files.retrieve(file_id)
        assert meta.purpose == "fine-tune-results"
        names[meta.filename] = file_id
        (folder / meta.filename).write_bytes(client.files.content(file_id).content)
    return {"created": job, "done": done, "folder": folder, "names": names}


def test_job_echoes_its_integrations(gw: LiveGateway, secret: str, finished, recorder: SpecRecorder) -> None:
    expected = [{"type": "wandb", "wandb": WANDB}]
    assert [i.model_dump() for i in finished["created"].integrations] == expected
    again = gw.client(secret, recorder).fine_tuning.jobs.retrieve(finished["done"].id)
    assert [i.model_dump() for i in again.integrations] == expected
    assert "FineTuningJob" in recorder.checked


def test_results_carry_the_csv_tensorboard_and_the_wandb_run(finished) -> None:
    done = finished["done"]
    assert list(finished["names"]) == ["step_metrics.csv", "tensorboard.tar.gz", "wandb-offline-run.tar.gz"]
    assert done.result_files[0] == finished["names"]["step_metrics.csv"]  # the CSV stays first, as OpenAI's


def _steps(folder: Path) -> dict[int, float]:
    rows = csv.DictReader(io.StringIO((folder / "step_metrics.csv").read_text()))
    return {int(r["step"]): float(r["train_loss"]) for r in rows if r["train_loss"]}


def test_tensorboard_events_read_back(finished, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tarfile.open(finished["folder"] / "tensorboard.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    [events] = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert "train_loss" in acc.Tags()["scalars"] and "learning_rate" in acc.Tags()["scalars"]
    logged = {e.step: e.value for e in acc.Scalars("train_loss")}
    expected = _steps(finished["folder"])
    assert sorted(logged) == sorted(expected) == list(range(1, 11))
    assert all(abs(logged[s] - expected[s]) < 1e-4 for s in expected)


def wandb_records(log: Path) -> Iterator[bytes]:
    """The records of a ``.wandb`` run log — W&B's LevelDB-style log (wandb 0.31 no longer ships a Python reader):
    a 7-byte header ``:W&B`` + magic 0xBEE1 + version 0, then 32 KiB blocks of records, each a 7-byte header (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; a block's last < 7 bytes are padding."""
    data = log.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break  # zero fill after the last record
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind in (2, 3):
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def test_wandb_offline_run_is_readable_and_syncable(finished, tmp_path: Path) -> None:
    from wandb.proto import wandb_internal_pb2

    with tarfile.open(finished["folder"] / "wandb-offline-run.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    [run_dir] = list(tmp_path.glob("offline-run-*"))
    [log] = list(run_dir.glob("run-*.wandb"))
    assert (run_dir / "files").is_dir()
    run, history = None, {}
    for data in wandb_records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            if "train_loss" in items:
                history[int(items["_step"])] = float(items["train_loss"])
    assert run is not None and run.project == "tunegate-tests" and run.display_name == "tiny run"
    assert run.entity == ""  # the tenant named none: the worker's WANDB_ENTITY does not fill it in
    assert {"ci", "tiny", "tunegate/finetune", f"tunegate/{finished['done'].id}"} <= set(run.tags)
    expected = _steps(finished["folder"])
    assert sorted(history) == sorted(expected) and all(abs(history[s] - expected[s]) < 1e-4 for s in expected)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    synced = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(run_dir)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synced.returncode == 0 and "Would sync 1 run(s)" in synced.stdout + synced.stderr, synced


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ([{"type": "comet", "wandb": {"project": "p"}}], "integrations[0].type"),
        ([{"type": "wandb"}], "integrations[0].wandb"),
        ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project"),
        ([{"type": "wandb", "wandb": {"project": ""}}], "integrations[0].wandb.project"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": "a"}}], "integrations[0].wandb.tags"),
        ([{"type": "wandb", "wandb": {"project": "p", "name": 3}}], "integrations[0].wandb.name"),
        ([{"type": "wandb", "wandb": {"project": "p", "team": "x"}}], "integrations[0].wandb.team"),
        ([{"type": "wandb", "wandb": {"project": "p"}}] * 6, "integrations"),
        (["wandb"], "integrations[0]"),
        ([{"type": "wandb", "wandb": {"project": "p", "entity": "someone-else"}}], "integrations[0].wandb.entity"),
        (
            [{"type": "wandb", "wandb": {"project": "p"}}, {"type": "wandb", "wandb": {"project": "q", "entity": "x"}}],
            "integrations[1].wandb.entity",
        ),
        ([{"type": "wandb", "wandb": {"project": "a/b"}}], "integrations[0].wandb.project"),
        ([{"type": "wandb", "wandb": {"project": "p" * 97}}], "integrations[0].wandb.project"),
    ],
)
def test_invalid_integrations_name_their_field(
    client: openai.OpenAI, training: str, integrations: list, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(model=TINY, training_file=training, integrations=integrations)
    assert exc.value.response.json()["error"]["param"] == param


def test_integrations_unit() -> None:
    from finetune import integrations

    assert integrations.parse(None) is None and integrations.parse([]) is None
    assert integrations.parse([{"type": "wandb", "wandb": {"project": "p"}}]) == [
        {"type": "wandb", "wandb": {"project": "p", "name": None, "entity": None, "tags": []}}
    ]
    assert integrations.wandb_online({"WANDB_API_KEY": "k"}) is True
    assert integrations.wandb_online({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) is False
    assert integrations.wandb_online({}) is False

    assert (
        integrations.parse([{"type": "wandb", "wandb": {"project": "p", "entity": OPERATOR}}], OPERATOR)[0]["wandb"][
            "entity"
        ]
        == OPERATOR
    )
    assert (
        integrations.parse([{"type": "wandb", "wandb": {"project": "p", "entity": "x"}}], None)[0]["wandb"]["entity"]
        == "x"
    )  # no entity configured: runs are offline, the tenant's to sync with their key
    with pytest.raises(Exception) as exc:
        integrations.parse([{"type": "wandb", "wandb": {"project": "p", "entity": "x"}}], OPERATOR)
    assert exc.value.param == "integrations[0].wandb.entity"  # type: ignore[attr-defined]


ORG = "org-" + "A" * 24
KEY = {"WANDB_API_KEY": "k" * 40}


@pytest.mark.parametrize(
    ("asked", "configured", "env", "expected"),
    [
        (None, OPERATOR, KEY, ("online", OPERATOR, f"{ORG}-proj")),
        (OPERATOR, OPERATOR, KEY, ("online", OPERATOR, f"{ORG}-proj")),
        ("victim-team", OPERATOR, KEY, ("offline", "victim-team", "proj")),  # a job stored before the setting changed
        ("victim-team", None, KEY, ("offline", "victim-team", "proj")),  # key but no entity: never used for jobs
        (None, None, KEY, ("offline", None, "proj")),
        ("mine", OPERATOR, {}, ("offline", "mine", "proj")),  # no key: offline as before
        (None, OPERATOR, {**KEY, "WANDB_MODE": "offline"}, ("offline", None, "proj")),
    ],
)
def test_wandb_target_never_aims_the_key_elsewhere(asked, configured, env, expected) -> None:
    from finetune import integrations

    mode, entity, project, why = integrations.wandb_target({"project": "proj", "entity": asked}, ORG, configured, env)
    assert (mode, entity, project) == expected
    assert (why is None) == (mode == "online" or not integrations.wandb_online(env))


@pytest.mark.parametrize(("asked", "online"), [(None, True), ("victim-team", False)])
def test_tracker_writes_with_the_key_only_into_the_org_scoped_project(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, asked: str | None, online: bool
) -> None:
    """The child's Tracker with the operator's key (and WANDB_ENTITY / WANDB_PROJECT) in its environment: what it
    hands wandb.init — the one place a run's destination is chosen."""
    import wandb

    from finetune.integrations import Tracker

    seen: list[dict] = []

    class Run:
        def log(self, *_a, **_k) -> None: ...
        def finish(self) -> None: ...

    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.append(kwargs) or Run())
    for name, value in (*KEY.items(), ("WANDB_ENTITY", OPERATOR), ("WANDB_PROJECT", "operator-private")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    warnings: list[str] = []
    tracker = Tracker(
        tmp_path,
        "ftjob-x",
        TINY,
        [{"type": "wandb", "wandb": {"project": "operator-private", "name": None, "entity": asked, "tags": []}}],
        warn=warnings.append,
        org_id=ORG,
        wandb_entity=OPERATOR,
    )
    tracker.close()
    [kwargs] = seen
    assert "WANDB_ENTITY" not in os.environ and "WANDB_PROJECT" not in os.environ
    if online:
        assert (kwargs["mode"], kwargs["entity"], kwargs["project"]) == ("online", OPERATOR, f"{ORG}-operator-private")
        assert not warnings
    else:
        assert (kwargs["mode"], kwargs["entity"], kwargs["project"]) == ("offline", asked, "operator-private")
        assert any("offline" in w and "victim-team" in w for w in warnings), warnings
