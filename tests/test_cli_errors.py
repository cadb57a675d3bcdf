"""A start the user can fix fails with one line naming what to change, exit status 1 and no
traceback; a taken port fails before the model loads."""
import logging
import socket

import pytest

from runtime import cli


def run_cli(argv, capsys) -> tuple[int, str]:
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def taken_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_missing_model_folder(tmp_path, capsys):
    rc, err = run_cli(["serve", "--model", str(tmp_path / "no-model"),
                       "--data-dir", str(tmp_path / "data")], capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"agentkv serve: model folder {str(tmp_path / 'no-model')!r} does not exist; give a "
        "folder holding a Hugging Face config.json and *.safetensors, or 'tiny'"]
    rc, err = run_cli(["generate", "--model", str(tmp_path / "no-model"), "--prompt", "hi"],
                      capsys)
    assert rc == 1 and err.startswith("agentkv generate: model folder") and "Traceback" not in err


def test_a_taken_port_fails_before_the_model_loads(tmp_path, capsys, caplog):
    with taken_port() as s:
        port = s.getsockname()[1]
        with caplog.at_level(logging.INFO):
            rc, err = run_cli(["serve", "--model", "tiny", "--host", "127.0.0.1", "--port",
                               str(port), "--data-dir", str(tmp_path / "data")], capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"agentkv serve: cannot listen on 127.0.0.1:{port}: the port is taken")
    assert not [r for r in caplog.records if "engine ready" in r.getMessage()]


def test_a_data_directory_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    rc, err = run_cli(["serve", "--model", "tiny", "--port", "0",
                       "--data-dir", str(tmp_path / "a-file" / "data")], capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"agentkv serve: cannot create the data directory {str(tmp_path / 'a-file' / 'data')!r}")


def test_an_unreadable_key_file(tmp_path, capsys):
    rc, err = run_cli(["serve", "--model", "tiny", "--port", "0", "--data-dir",
                       str(tmp_path / "data"), "--api-keys", str(tmp_path / "keys.json")],
                      capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"agentkv serve: cannot read the API key file {str(tmp_path / 'keys.json')!r}")


@pytest.mark.timeout(120)
def test_a_taken_metrics_port_stops_the_server_it_started(tmp_path, capsys):
    with taken_port() as s:
        port = s.getsockname()[1]
        rc, err = run_cli(["serve", "--model", "tiny", "--port", "0", "--data-dir",
                           str(tmp_path / "data"), "--metrics-port", str(port)], capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"agentkv serve: cannot serve metrics on 127.0.0.1:{port}:")
    # the failed start undid itself: the data directory can be opened again at once
    from sessions.store import SessionStore
    SessionStore(str(tmp_path / "data")).close()
