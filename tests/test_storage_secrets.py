"""Object-storage data paths and credentials (issue 2 §2, issue 8 §5): location parsing, and secrets never
in LakeConfig.display/repr, CLI output or error messages. Real S3 is unreachable offline; the write below
goes to a closed local port so the failure path (with the secret loaded) is exercised for real."""
from __future__ import annotations


import pytest

from core.errors import LakeError
from storage.lake import Lake, LakeConfig, redact
from bench.loadgen.stress import make_batch
from storage.writes import write_models

SECRET = "sup3r-s3cret-Value/42"
KEY_ID = "AKIAZOOTESTKEY000001"
PG_PASSWORD = "pg-pass-Word-99"


@pytest.fixture
def s3_env(monkeypatch):
    env = {"ZOO_DATA_PATH": "s3://zoo-bucket/lake", "ZOO_S3_KEY_ID": KEY_ID, "ZOO_S3_SECRET": SECRET,
           "ZOO_S3_ENDPOINT": "127.0.0.1:9", "ZOO_S3_USE_SSL": "false", "ZOO_S3_URL_STYLE": "path",
           "ZOO_S3_REGION": "eu-west-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def assert_no_secret(text: str) -> None:
    for s in (SECRET, KEY_ID, PG_PASSWORD):
        assert s not in text, text


def test_location_parsing(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_DATA_PATH", raising=False)
    monkeypatch.delenv("ZOO_LAKE", raising=False)
    assert LakeConfig.parse(tmp_path / "a") == LakeConfig("duckdb", str(tmp_path / "a" / "zoo.ducklake"), str(tmp_path / "a" / "data"))
    assert LakeConfig.parse(f"sqlite:{tmp_path}/b").target == str(tmp_path / "b" / "zoo.sqlite")
    assert LakeConfig.parse(f"duckdb:{tmp_path}/c").catalog == "duckdb"
    assert LakeConfig.parse(None).target.endswith("lake/zoo.ducklake")
    monkeypatch.setenv("ZOO_LAKE", f"sqlite:{tmp_path}/env")
    assert LakeConfig.parse(None).catalog == "sqlite"
    with pytest.raises(LakeError, match="ZOO_DATA_PATH"):
        LakeConfig.parse("postgres:dbname=zoo")
    monkeypatch.setenv("ZOO_DATA_PATH", "s3://bucket/prefix")
    cfg = LakeConfig.parse("postgres:dbname=zoo host=db")
    assert (cfg.catalog, cfg.target, cfg.data_path, cfg.object_store) == ("postgres", "dbname=zoo host=db", "s3://bucket/prefix", True)
    assert LakeConfig.parse(tmp_path / "d").data_path == "s3://bucket/prefix"


def test_display_and_repr_hide_passwords(monkeypatch):
    monkeypatch.setenv("ZOO_DATA_PATH", f"s3://{KEY_ID}:{SECRET}@bucket/x")
    cfg = LakeConfig.parse(f"postgres:dbname=zoo host=db password={PG_PASSWORD} user=zoo")
    for text in (cfg.display, repr(cfg), str(cfg)):
        assert_no_secret(text)
        assert "dbname=zoo" in text or "LakeConfig" in text
    assert "user=zoo" in cfg.display and "password=***" in cfg.display


def test_redact_env_secrets(s3_env):
    assert redact(f"failed with key {KEY_ID} and {SECRET}") == "failed with key *** and ***"
    assert redact("password='a b c' host=x") == "password=*** host=x"


def test_s3_lake_loads_secret_and_failing_write_hides_it(tmp_path, s3_env):
    with Lake.open(tmp_path / "lake", create=True) as lk:
        assert lk.config.object_store
        (secret_string,) = lk.con.execute("SELECT secret_string FROM duckdb_secrets() WHERE name = 'zoo_data'").fetchone()
        assert SECRET not in secret_string and "endpoint=127.0.0.1:9" in secret_string
        before = lk.snapshots()
        with pytest.raises(LakeError) as err:
            write_models(lk, make_batch(0, 0, 1), f"write with {SECRET} in the message")
        assert_no_secret(str(err.value))
        assert "s3" in str(err.value) or "127.0.0.1" in str(err.value)
        assert lk.snapshots() == before


def test_failing_postgres_open_hides_password(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_DATA_PATH", str(tmp_path / "data"))
    loc = f"postgres:dbname=zoo host=127.0.0.1 port=9 user=zoo password={PG_PASSWORD} connect_timeout=2"
    with pytest.raises(LakeError) as err:
        Lake.open(loc, lock_timeout=0)
    assert_no_secret(str(err.value))
    assert "cannot open lake postgres:" in str(err.value)


def test_cli_output_and_errors_hide_secrets(tmp_path, s3_env, zoo_cli):
    lake = tmp_path / "lake"
    outs = [zoo_cli(*args, lake=lake) for args in (
        ["init"], ["snapshots"], ["sql", "SELECT * FROM duckdb_secrets()", "-f", "csv"],
        ["sql", "--write", "INSERT INTO labels VALUES ('m', 'p', 1.0, 'l', 1, '{}', now())"],
        ["export", str(tmp_path / "exp")])]
    for proc in outs:
        assert_no_secret(proc.stdout + proc.stderr)
    assert [p.returncode for p in outs] == [0, 0, 2, 0, 0]
    assert "may not read the connection's secrets" in outs[2].stderr
