"""deploy/helm/tunegate rendered by Helm's own template engine (the Helm v4 Go SDK, through helm-python-sdk: no helm
binary is packaged for this machine) and every manifest checked against the Kubernetes JSON schemas (strict:
unknown fields fail) with kubernetes-validate; the settings it hands tunegate are parsed by tunegate's Settings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extra)")

from storage.settings import Settings  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "tunegate"
K8S_VERSION = "1.33.0"
VALUES = {
    "secrets": {
        "adminKey": "sk-admin",
        "databaseUrl": "postgresql+psycopg://tg:pw@pg:5432/tunegate",
        "engineApiKey": "engine-key",
        "s3AccessKeyId": "AK",
        "s3SecretAccessKey": "SK",
    },
    "redisUrl": "redis://redis:6379/0",
    "objectStore": {"blobUrl": "s3://tunegate/blobs", "endpointUrl": "http://minio:9000"},
    "baseModels": {
        "Qwen/Qwen2.5-0.5B-Instruct": {"source": "Qwen/Qwen2.5-0.5B-Instruct", "engineReplicas": 2},
        "tiny": {"source": "/models/tiny", "engineReplicas": 1},
    },
    "serviceMonitor": {"enabled": True},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="tg", namespace="ml")
    return [
        doc for path, text in sorted(out.items()) if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc
    ]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(VALUES)


def test_every_manifest_matches_the_kubernetes_schema(docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in docs)
    assert {"Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Service", "Secret", "ConfigMap"} <= set(kinds)
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD (Prometheus Operator): not in the core schemas
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises, naming the field


def test_a_wrong_field_is_caught() -> None:
    """The validator is not vacuous: a misspelt field in a rendered manifest fails."""
    bad = by_kind(render(VALUES), "Deployment")["tg-tunegate-gateway"]
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_gateway_worker_and_engines(docs: list[dict[str, Any]]) -> None:
    deployments, sets = by_kind(docs, "Deployment"), by_kind(docs, "StatefulSet")
    gateway, worker = deployments["tg-tunegate-gateway"], deployments["tg-tunegate-worker"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["tg-tunegate-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tg-tunegate-gateway" and "replicas" not in gateway["spec"]
    pod = worker["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["command"] == ["tunegate", "worker"]
    # one StatefulSet per base model, as many replicas as asked, behind a headless Service of the same name
    assert {n: s["spec"]["replicas"] for n, s in sets.items()} == {"tg-tunegate-engine-0": 2, "tg-tunegate-engine-1": 1}
    services = by_kind(docs, "Service")
    for name, statefulset in sets.items():
        assert statefulset["spec"]["serviceName"] == name and services[name]["spec"]["clusterIP"] == "None"
    # the gateways list exactly those pods' stable DNS names, with the engines' key
    secrets = by_kind(docs, "Secret")
    models = json.loads(secrets["tg-tunegate-engines"]["stringData"]["base-models"])
    assert models["Qwen/Qwen2.5-0.5B-Instruct"]["engine_urls"] == [
        "http://tg-tunegate-engine-0-0.tg-tunegate-engine-0.ml.svc:8000",
        "http://tg-tunegate-engine-0-1.tg-tunegate-engine-0.ml.svc:8000",
    ]
    assert models["tiny"]["engine_urls"] == ["http://tg-tunegate-engine-1-0.tg-tunegate-engine-1.ml.svc:8000"]
    assert {m["engine_api_key"] for m in models.values()} == {"engine-key"}
    env = env_of(gateway["spec"]["template"]["spec"]["containers"][0])
    assert env["TUNEGATE_WORKER__EMBEDDED"] == "false" and env["TUNEGATE_SERVING__LOCAL_ENGINES"] == "false"
    assert env["TUNEGATE_BLOB_URL"] == "s3://tunegate/blobs" and env["TUNEGATE_REDIS_URL"] == "redis://redis:6379/0"
    # every secret a pod names exists, with that key
    for d in [*deployments.values(), *sets.values()]:
        for container in d["spec"]["template"]["spec"]["containers"]:
            for ref in (v["secretKeyRef"] for v in env_of(container).values() if isinstance(v, dict)):
                assert ref["key"] in secrets[ref["name"]]["stringData"] or ref.get("optional"), ref


def test_tunegate_reads_the_settings_it_is_given(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """The TOML config of gateways/workers and each engine's settings file are valid tunegate Settings."""
    toml = by_kind(docs, "ConfigMap")["tg-tunegate-config"]["data"]["tunegate.toml"]
    (tmp_path / "tunegate.toml").write_text(toml)
    settings = Settings.load(tmp_path / "tunegate.toml")
    assert settings.metrics == "admin" and settings.serving.max_adapters_per_engine == 64
    engines = by_kind(docs, "Secret")["tg-tunegate-engines"]["stringData"]
    for i, model in enumerate(sorted(VALUES["baseModels"])):
        engine = Settings.model_validate_json(engines[f"engine-{i}.json"])
        assert list(engine.base_models) == [model]
        assert engine.serving.engine_args[:2] == ["--host", "0.0.0.0"]  # reachable from the gateways' pods
        assert engine.blob_url == "s3://tunegate/blobs" and engine.database_url is None
        command = by_kind(docs, "StatefulSet")[f"tg-tunegate-engine-{i}"]["spec"]["template"]["spec"]["containers"][0]
        assert command["command"][3:] == [f"/etc/tunegate-engine/engine-{i}.json", model, "8000"]


def test_required_secrets_are_named() -> None:
    with pytest.raises(Exception, match="secrets.adminKey is required"):
        render({**VALUES, "secrets": {"databaseUrl": "postgresql+psycopg://x"}})
    existing = render({**VALUES, "secrets": {"existingSecret": "mine"}})
    assert "tg-tunegate-secrets" not in by_kind(existing, "Secret")  # the user's Secret is used instead
    env = env_of(by_kind(existing, "Deployment")["tg-tunegate-gateway"]["spec"]["template"]["spec"]["containers"][0])
    assert env["TUNEGATE_ADMIN_KEY"]["secretKeyRef"]["name"] == "mine"


COMPOSE_SECRETS = ("TUNEGATE_ADMIN_KEY", "POSTGRES_PASSWORD", "S3_SECRET_KEY", "ENGINE_API_KEY")


def test_compose_ships_no_default_secrets() -> None:
    """compose.yaml takes every secret from the environment or .env, with no fallback: a missing one stops
    `docker compose up` with a message (``${VAR:?…}``) instead of starting a stack anyone could log into; every
    secret is used somewhere and .env.example lists each, empty."""
    repo = CHART.parents[2]
    compose = (repo / "compose.yaml").read_text()
    uses = re.findall(r"\$\{(\w+)(:?[-?])?([^}]*)\}", compose)
    for name in COMPOSE_SECRETS:
        forms = {(op, message) for used, op, message in uses if used == name}
        assert forms and all(op == ":?" and name in message for op, message in forms), (name, forms)
    example = dict(
        line.split("=", 1) for line in (repo / ".env.example").read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert all(example.get(name) == "" for name in COMPOSE_SECRETS), example
    assert yaml.safe_load(compose)["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
