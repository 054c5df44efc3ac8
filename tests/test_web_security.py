"""What a browser or a second key can do to a server: owners that never collide, DNS rebinding, cross-site
writes (a login that swaps the visitor's key, an upload to a key-less server).

In-process tests run the real app (Guard, SameOrigin, routes, store) through Starlette's TestClient; the Host
check is also tested on a real `appraiser dashboard` process, where the CLI decides which names it answers.
"""

from __future__ import annotations

import pytest
from conftest import KEY, OTHER_KEY
from typer.testing import CliRunner

from appraiser.cli import app as cli_app
from appraiser.data.io import DataError
from appraiser.server.security import COOKIE, default_owner, hash_key, key_table, read_keys_file

BASE = "http://127.0.0.1:8321"
LOOPBACK = ["127.0.0.1", "localhost", "::1"]


def _client(tmp_path, keys=None, allowed_hosts=None):
    from fastapi.testclient import TestClient

    from appraiser.server import ServerSettings, create_app

    settings = ServerSettings(keys=keys or {}, root=tmp_path / "server", allowed_hosts=allowed_hosts)
    return TestClient(create_app(settings), base_url=BASE, follow_redirects=False)


# ---------------------------------------------------------------- owners


def test_a_keys_file_line_without_an_owner_never_lands_on_a_plain_keys_data(tmp_path):
    """The collision a probe found: `--api-key A --keys-file F`, F's first line a digest without an owner,
    used to make that key `key1`, A's owner, so it listed, read and deleted A's files."""
    f = tmp_path / "keys"
    f.write_text(f"{hash_key('sk-third')}\n")
    keys = key_table([KEY, OTHER_KEY], f)
    assert sorted(keys.values()) == sorted(default_owner(hash_key(k)) for k in (KEY, OTHER_KEY, "sk-third"))
    with _client(tmp_path, keys) as client:
        up = client.post(
            "/v1/files",
            headers={"Authorization": f"Bearer {KEY}"},
            data={"purpose": "batch"},
            files={"file": ("mine.jsonl", b'{"a": 1}\n')},
        )
        assert up.status_code == 200, up.text
        third = {"Authorization": "Bearer sk-third"}
        assert client.get("/v1/files", headers=third).json()["data"] == []
        assert client.get(f"/v1/files/{up.json()['id']}", headers=third).status_code == 404
        assert client.delete(f"/v1/files/{up.json()['id']}", headers=third).status_code == 404
        assert client.get(f"/v1/files/{up.json()['id']}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_a_keys_owner_does_not_depend_on_the_other_keys():
    """A review found owners by position: restarted with `--api-key B` alone, B became `key1` and read the files
    A had made as `key1`."""
    assert key_table([KEY, OTHER_KEY])[hash_key(OTHER_KEY)] == key_table([OTHER_KEY])[hash_key(OTHER_KEY)]
    with pytest.raises(DataError, match="given twice"):
        key_table([KEY, KEY])


def test_owner_names_that_could_collide_are_refused_and_a_shared_one_is_shared_on_purpose(tmp_path):
    f = tmp_path / "keys"
    one, two = hash_key("sk-c"), hash_key("sk-d")
    f.write_text(f"{one} alice   # two keys of one person\n{two} alice\n")
    assert read_keys_file(f) == {one: "alice", two: "alice"}
    f.write_text(f"{one}\n{two}\n")
    assert len(set(read_keys_file(f).values())) == 2  # no owner written: each its own
    for taken in (f"key-{one[:12]}", "key-0123", "owner-name"):
        f.write_text(f"{one} {taken}\n")
        with pytest.raises(DataError, match=r"keys:1: .* cannot be an owner name"):
            key_table([KEY], f)
    f.write_text(f"{one} key1\n")  # how data made by the first --api-key before owners were digests is kept
    assert read_keys_file(f) == {one: "key1"}
    f.write_text(f"{one} alice\n{one} bob\n")
    with pytest.raises(DataError, match="keys:2: this key is on an earlier line"):
        read_keys_file(f)
    f.write_text(f"{hash_key(KEY)} bob\n")
    with pytest.raises(DataError, match="give it once"):
        key_table([KEY], f)


def test_hash_key_prints_a_line_the_keys_file_takes_as_its_own_owner(tmp_path):
    out = CliRunner().invoke(cli_app, ["serve", "--hash-key", "sk-printed"])
    assert out.exit_code == 0, out.output
    (tmp_path / "keys").write_text(out.output)
    digest = hash_key("sk-printed")
    assert out.output.split() == [digest]
    assert read_keys_file(tmp_path / "keys") == {digest: default_owner(digest)}


# ---------------------------------------------------------------- browsers


def test_a_page_on_another_site_cannot_log_a_browser_in_or_out(tmp_path):
    """Login CSRF: a form on http://localhost:18423 posting the attacker's key used to replace the visitor's
    cookie, so the visitor then read (and trusted) the attacker's runs."""
    with _client(tmp_path, key_table([KEY, OTHER_KEY]), LOOPBACK) as client:
        evil = client.post("/dashboard/login", data={"key": OTHER_KEY}, headers={"Origin": "http://localhost:18423"})
        assert evil.status_code == 403 and evil.json()["error"]["code"] == "cross_site_request"
        assert COOKIE not in evil.headers.get("set-cookie", "")
        fetch = client.post("/dashboard/logout", headers={"Sec-Fetch-Site": "cross-site"})
        assert fetch.status_code == 403
        for other in ("null", "http://127.0.0.1", "http://127.0.0.1:9", "http://127.0.0.1.evil.example:8321", "bogus"):
            assert client.post("/dashboard/login", data={"key": KEY}, headers={"Origin": other}).status_code == 403
        own = client.post("/dashboard/login", data={"key": KEY}, headers={"Origin": BASE})  # its own login form
        assert own.status_code == 303 and COOKIE in own.headers["set-cookie"]
        assert client.post("/dashboard/login", data={"key": KEY}).status_code == 303  # no Origin: not a browser page
        # a Host without a port is port 80 or 443: a page on another port of the same name is another site
        portless = {"Host": "localhost", "Origin": "http://localhost:8080"}
        assert client.post("/dashboard/login", data={"key": KEY}, headers=portless).status_code == 403
        for same in ("http://localhost", "https://localhost"):
            headers = {"Host": "localhost", "Origin": same}
            assert client.post("/dashboard/login", data={"key": KEY}, headers=headers).status_code == 303


def test_behind_a_reverse_proxy_the_dashboards_own_login_still_works(tmp_path):
    """nginx's default proxy_pass sends `Host: 127.0.0.1:PORT` while the page is https://public.example: the
    browser's Sec-Fetch-Site (which no page can set) says same-origin, and an Origin named by --allow-host is
    the server's own."""
    proxied = {"Host": "127.0.0.1:8321", "Origin": "https://appraiser.example"}
    with _client(tmp_path, key_table([KEY]), [*LOOPBACK, "appraiser.example"]) as client:
        fetch = {**proxied, "Sec-Fetch-Site": "same-origin"}
        assert client.post("/dashboard/login", data={"key": KEY}, headers=fetch).status_code == 303
        assert client.post("/dashboard/login", data={"key": KEY}, headers=proxied).status_code == 303  # no Sec-Fetch
        evil = {"Host": "127.0.0.1:8321", "Origin": "https://evil.example"}
        assert client.post("/dashboard/login", data={"key": KEY}, headers=evil).status_code == 403
        assert (
            client.post(
                "/dashboard/login", data={"key": KEY}, headers={**fetch, "Sec-Fetch-Site": "same-site"}
            ).status_code
            == 403
        )


def test_a_keyless_server_takes_no_upload_from_another_site_but_the_sdk_is_unaffected(tmp_path):
    with _client(tmp_path, None, LOOPBACK) as client:
        files = {"file": ("x.jsonl", b'{"a": 1}\n')}
        blocked = client.post("/v1/files", data={"purpose": "batch"}, files=files, headers={"Origin": "null"})
        assert blocked.status_code == 403
        assert client.get("/v1/files").json()["data"] == []
        ok = client.post("/v1/files", data={"purpose": "batch"}, files=files)  # the SDK sends no Origin
        assert ok.status_code == 200, ok.text
        reads = client.get("/v1/files", headers={"Origin": "http://evil.example"})  # a read: the browser hides it
        assert reads.status_code == 200


def test_a_loopback_server_answers_only_to_its_own_names(tmp_path):
    """DNS rebinding: a page on attacker.example made to resolve to 127.0.0.1 is same-origin with the
    server, so only the Host header tells it apart."""
    with _client(tmp_path, None, LOOPBACK) as client:
        for host in ("attacker.example", "attacker.example:8321", "127.0.0.1.nip.io:8321"):
            r = client.get("/dashboard/api/runs", headers={"Host": host})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
        for host in ("127.0.0.1:8321", "localhost:8321", "LOCALHOST.", "[::1]:8321", "127.0.0.1"):
            assert client.get("/dashboard/api/runs", headers={"Host": host}).status_code == 200, host


def test_the_cli_decides_the_names_a_server_answers():
    from appraiser.cli.serve import allowed_hosts

    assert set(allowed_hosts("127.0.0.1")) == set(LOOPBACK)
    assert "proxy.example" in allowed_hosts("::1", ["proxy.example"])
    assert allowed_hosts("0.0.0.0") is None  # a public bind needs keys, which guard it; any name may reach it
    assert allowed_hosts("0.0.0.0", ["appraiser.example"]) == ["0.0.0.0", "appraiser.example"]
    for url in ("https://proxy.example", "proxy.example/x", "proxy.example:443", ""):
        with pytest.raises(DataError, match="--allow-host takes a host name"):
            allowed_hosts("127.0.0.1", [url])
