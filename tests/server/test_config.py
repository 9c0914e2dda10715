import socket

import pytest

from seedance.server.http.config import ServerConfig
from seedance.server.http.keepalive import PRESETS, apply_keepalive


def test_precedence_file_then_env_then_flags(tmp_path):
    path = tmp_path / "seedance.toml"
    path.write_text('port = 9000\nmax_requests_per_connection = 4\nkeepalive = "aggressive"\n'
                    '[engine]\nmax_num_seqs = 16\ndtype = "bfloat16"\n')
    env = {"SEEDANCE_PORT": "9100", "SEEDANCE_MAX_NUM_SEQS": "24", "SEEDANCE_HEARTBEAT_INTERVAL_S": "0.5",
           "SEEDANCE_NUM_KV_BLOCKS": "128", "OTHER": "x"}
    cfg = ServerConfig.load(path, env=env, port=9200, model=None)
    assert cfg.port == 9200  # flag beats env beats file
    assert cfg.max_requests_per_connection == 4 and cfg.keepalive == "aggressive"
    assert cfg.engine.max_num_seqs == 24 and cfg.engine.dtype == "bfloat16"
    assert cfg.heartbeat_interval_s == 0.5 and cfg.engine.num_kv_blocks == 128


def test_unknown_settings_and_bad_values_are_refused_with_their_source(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(ValueError, match=r"bad.toml: unknown setting 'prot'"):
        ServerConfig.load(path, env={})
    with pytest.raises(ValueError, match="SEEDANCE_PORT: port expects int"):
        ServerConfig.load(env={"SEEDANCE_PORT": "eighty"})
    with pytest.raises(ValueError, match="low_water"):
        ServerConfig.load(env={"SEEDANCE_SEND_LOW_WATER_BYTES": str(1 << 30)})
    with pytest.raises(ValueError, match="keepalive"):
        ServerConfig.load(env={}, keepalive="sometimes")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_keepalive_presets_are_set_on_the_socket(preset):
    with socket.socket() as sock:
        assert apply_keepalive(sock, preset)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle, interval, count = PRESETS[preset]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == count
    with socket.socket() as sock:
        assert not apply_keepalive(sock, "off")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_an_unknown_seedance_environment_variable_is_refused_with_its_name():
    with pytest.raises(ValueError, match="SEEDANCE_MAX_CONECTIONS: unknown setting"):
        ServerConfig.load(env={"SEEDANCE_MAX_CONECTIONS": "5"})
    with pytest.raises(ValueError, match="SEEDANCE_ENGINE"):
        ServerConfig.load(env={"SEEDANCE_ENGINE": "x"})
    # names other seedance tools read are not server settings, and not refused
    assert ServerConfig.load(env={"SEEDANCE_URL": "ws://x", "SEEDANCE_TOKEN": "t", "OTHER": "1"}).port == 8000


def test_connection_guard_settings_are_validated():
    with pytest.raises(ValueError, match="header_timeout_s"):
        ServerConfig.load(env={"SEEDANCE_HEADER_TIMEOUT_S": "0"})
    with pytest.raises(ValueError, match="fd_reserve"):
        ServerConfig.load(env={"SEEDANCE_FD_RESERVE": "-1"})


def test_serve_takes_the_session_store_option_the_docs_name():
    from typer.testing import CliRunner

    from seedance.cli import app

    assert "--session-store" in CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
