"""A first end-to-end pass through a real server: log in, browse, transfer."""

from ftpd import errors


def test_server_login_and_browse(server):
    conn = server.login("alice")
    assert conn.greeting.data["protocol"] == 1
    assert conn.call("pwd").data["cwd"] == "/"
    conn.call("mkdir", path="a/b", parents=True)
    assert conn.call("cd", path="a").data["cwd"] == "/a"
    assert [e["name"] for e in conn.listdir()] == ["b"]
    conn.quit()


def test_server_rejects_before_login(server):
    conn = server.connect()
    try:
        conn.call("ls")
    except errors.NotLoggedInError:
        pass
    else:
        raise AssertionError("ls before login succeeded")
    conn.close()


def test_daemon_process_serves_and_stops_cleanly(daemon):
    import signal

    daemon.start()
    conn = daemon.login("bob")
    assert conn.call("pwd").data["cwd"] == "/"
    conn.quit()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_cli_plain_options_mean_serve(tmp_path, capsys):
    from ftpd.cli import main

    assert main(["--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: file not found" in capsys.readouterr().err
