"""The embedded ClickHouse server: the private chDB entry point it rests on is proven here on every run."""

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import pytest

from app.warehouse import embedded
from app.warehouse.embedded import (
    EmbeddedServer,
    EmbeddedServerError,
    _port_is_free,
    remove_user,
    serves_users_as_written,
    write_user,
)
from tests.conftest import free_port


def http_query(server: EmbeddedServer, sql: str, user: str = "admin", password: str | None = None) -> str:
    password = server.password(user) if password is None else password
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/",
        data=sql.encode(),
        headers={"X-ClickHouse-User": user, "X-ClickHouse-Key": password},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}: {error.read().decode()[:200]}"
    except urllib.error.URLError as error:
        return f"unreachable: {error.reason}"


def native_query(server: EmbeddedServer, sql: str) -> str:
    """The native TCP port answers too: a query through remote() goes over it."""
    return http_query(
        server,
        f"SELECT * FROM remote('127.0.0.1:{server.tcp_port}', system.one, 'admin', '{server.password('admin')}')"
        if sql == "one" else sql,
    )


@pytest.fixture
def server(tmp_path: Path):
    server = EmbeddedServer(tmp_path, free_port(), free_port())
    server.start()
    yield server
    server.stop()


def test_answers_over_http_and_native_tcp(server: EmbeddedServer) -> None:
    assert http_query(server, "SELECT version()").startswith("26.9")
    assert native_query(server, "one").strip() == "0"


def test_stop_frees_the_ports_and_leaves_no_process(server: EmbeddedServer) -> None:
    pid = server.pid
    server.stop()
    assert _port_is_free(server.http_port) and _port_is_free(server.tcp_port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_data_survives_a_restart(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path, free_port(), free_port())
    server.start()
    http_query(server, "CREATE TABLE kept (x UInt32) ENGINE = MergeTree ORDER BY x")
    http_query(server, "INSERT INTO kept VALUES (1), (2), (3)")
    server.stop()
    server.start()
    try:
        assert http_query(server, "SELECT sum(x) FROM kept").strip() == "6"
    finally:
        server.stop()


def test_a_second_server_on_the_same_data_directory_is_refused(server: EmbeddedServer) -> None:
    second = EmbeddedServer(server.root.parent, free_port(), free_port())
    with pytest.raises(EmbeddedServerError, match="in use by another server"):
        second.start(timeout=30)
    assert http_query(server, "SELECT 1").strip() == "1"


def test_users_have_passwords_and_default_reaches_no_data(server: EmbeddedServer) -> None:
    http_query(server, "CREATE TABLE secret (x UInt32) ENGINE = MergeTree ORDER BY x")
    assert "AUTHENTICATION_FAILED" in http_query(server, "SELECT 1", user="admin", password="wrong")
    assert "AUTHENTICATION_FAILED" in http_query(server, "SELECT 1", user="analyst", password="wrong")
    assert "ACCESS_DENIED" in http_query(server, "SELECT * FROM secret", user="default", password="")
    assert http_query(server, "SHOW TABLES", user="default", password="").strip() == ""
    assert "ACCESS_DENIED" in http_query(server, "CREATE USER intruder", user="default", password="")
    assert (server.root / "admin.password").stat().st_mode & 0o777 == 0o600


def test_analyst_is_read_only(server: EmbeddedServer) -> None:
    http_query(server, "CREATE TABLE facts (x UInt32) ENGINE = MergeTree ORDER BY x")
    http_query(server, "INSERT INTO facts VALUES (7)")
    assert http_query(server, "SELECT x FROM facts", user="analyst").strip() == "7"
    assert "ACCESS_DENIED" in http_query(server, "INSERT INTO facts VALUES (8)", user="analyst")
    assert "facts" in http_query(server, "SELECT name FROM system.tables WHERE database = 'default'", user="analyst")
    # Nothing beyond reading: no files, no requests from the server, no SYSTEM, no other database.
    written = server.root / "written-by-analyst.tsv"
    denied = [
        f"INSERT INTO FUNCTION file('{written}', 'TSV', 'a String') SELECT 'x'",
        f"SELECT * FROM url('http://127.0.0.1:{server.http_port}/?query=SELECT+1', 'RawBLOB')",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "SYSTEM STOP MERGES facts",
        "SELECT x FROM elsewhere.facts",
    ]
    http_query(server, "CREATE DATABASE elsewhere")
    http_query(server, "CREATE TABLE elsewhere.facts (x UInt32) ENGINE = MergeTree ORDER BY x")
    for sql in denied:
        assert "ACCESS_DENIED" in http_query(server, sql, user="analyst"), sql
    assert not written.exists()
    # Within the limits its profile sets: a query cannot lift them (0 is no limit).
    assert http_query(server, "SELECT getSetting('max_memory_usage')", user="analyst").strip() == "4000000000"
    for lifted in ("max_memory_usage = 0", "max_execution_time = 0", "max_memory_usage = 9000000000"):
        assert "SETTING_CONSTRAINT_VIOLATION" in http_query(server, f"SELECT 1 SETTINGS {lifted}", user="analyst")


def test_listens_on_loopback_only(server: EmbeddedServer) -> None:
    assert "<listen_host>127.0.0.1</listen_host>" in (server.etc_dir / "config.xml").read_text()


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(what)


def test_supervisor_restarts_a_dead_server(server: EmbeddedServer) -> None:
    server.supervise()
    old_pid = server.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: server.pid != old_pid and server.alive() and http_query(server, "SELECT 1").strip() == "1",
             "the embedded server was not restarted")


def test_supervisor_restarts_a_server_that_stopped_answering(server: EmbeddedServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "SILENT_RESTART_SECONDS", 3.0)
    server.supervise()
    old_pid = server.pid
    # The password-less in-process user may stop the listeners; the supervisor notices the silence.
    http_query(server, "SYSTEM STOP LISTEN HTTP", user="default", password="")
    assert http_query(server, "SELECT 1").startswith("unreachable")
    wait_for(lambda: server.pid != old_pid and http_query(server, "SELECT 1").strip() == "1",
             "the silent server was not restarted")


def test_a_supervised_server_restarts_to_take_a_users_file_and_to_drop_it(server: EmbeddedServer) -> None:
    server.supervise()
    http_query(server, "CREATE DATABASE app_one")
    first_pid = server.pid
    assert serves_users_as_written(server.users_folder)
    write_user(server.users_folder, "app_one_owner", "s3cret", "app_one", ["GRANT SELECT, CREATE TABLE ON app_one.*"])
    assert (server.users_folder / "app_one_owner.xml").stat().st_mode & 0o777 == 0o600
    assert not serves_users_as_written(server.users_folder)  # until the server restarts with it
    wait_for(lambda: serves_users_as_written(server.users_folder)
             and http_query(server, "SELECT currentDatabase()", "app_one_owner", "s3cret").strip() == "app_one",
             "the new user never logged in")
    assert server.pid != first_pid
    assert "HTTP" in http_query(server, "SELECT 1", "app_one_owner", "wrong")
    assert "Not enough privileges" in http_query(server, "SELECT count() FROM system.users", "app_one_owner", "s3cret")
    remove_user(server.users_folder, "app_one_owner")
    wait_for(lambda: serves_users_as_written(server.users_folder) and server.alive()
             and "HTTP" in http_query(server, "SELECT 1", "app_one_owner", "s3cret"), "the removed user still logs in")
    assert http_query(server, "SELECT 1").strip() == "1"


def test_clickhouse_connect_async_client_talks_to_it(server: EmbeddedServer) -> None:
    from app.warehouse.client import connect  # noqa: PLC0415

    async def roundtrip() -> int:
        client = await connect(server.url)
        try:
            return (await client.query("SELECT {x:UInt8} + 1", parameters={"x": 41})).result_rows[0][0]
        finally:
            await client.close()

    assert asyncio.run(roundtrip()) == 42


def test_inserts_feed_their_views_in_parallel(server: EmbeddedServer) -> None:
    """The default profile, here and in the official image's users (docker-compose), pushes an insert to its
    materialized views concurrently: one after the other, its views leave a core idle."""
    assert http_query(server, "SELECT getSetting('parallel_view_processing')").strip() == "true"
    image_users = ElementTree.parse(Path(__file__).parents[1] / "clickhouse_config/users.d/users.xml")
    assert image_users.findtext("profiles/default/parallel_view_processing") == "1"


def test_rocksdb_tables_answer_absent_keys_from_bloom_filters(server: EmbeddedServer) -> None:
    """A dedup lookup mostly asks for keys never stored (new events): with a bloom filter per SST file RocksDB
    answers those without reading a data block (8,000 random absent keys among 10M, a minute after the fill:
    about 35 ms against 165 without). Here and in the official image's server config (docker-compose)."""
    http_query(server, "CREATE TABLE bloom_probe (key String, value UInt8) ENGINE = EmbeddedRocksDB PRIMARY KEY key")
    http_query(server, "INSERT INTO bloom_probe SELECT toString(number), 1 FROM numbers(10000)")
    http_query(server, "INSERT INTO bloom_probe SELECT toString(number), 2 FROM numbers(5000, 10000)")
    http_query(server, "OPTIMIZE TABLE bloom_probe")  # compacts both inserts' files into one, with its filter
    # 100 keys never stored, each between two stored ones, so no file's key range rules them out.
    found = http_query(server, "SELECT count() FROM bloom_probe WHERE key IN "
                               "(SELECT toString(number) || 'x' FROM numbers(100))")
    assert found.strip() == "0"
    useful = http_query(server, "SELECT sum(value) FROM system.rocksdb WHERE database = currentDatabase() "
                                "AND table = 'bloom_probe' AND name = 'bloom.filter.useful'")
    assert int(useful) >= 90
    image = ElementTree.parse(Path(__file__).parents[1] / "clickhouse_config/config.d/server.xml")
    assert image.findtext("rocksdb/block_based_table_options/filter_policy") == "bloomfilter:10:false"


def test_the_official_images_config_names_only_what_clickhouse_knows(server: EmbeddedServer) -> None:
    """docker-compose's ClickHouse (clickhouse_config/config.d, users.d) cannot be started on these machines, and a
    misspelt setting stops that server at start. Its profiles are the embedded server's, plus the producers'
    own; every setting they name, and every server and MergeTree setting of its server config, is one ClickHouse
    26.9 knows."""
    root = Path(__file__).parents[1] / "clickhouse_config"
    image_profiles = ElementTree.parse(root / "users.d/users.xml").getroot().find("profiles")
    embedded_profiles = ElementTree.parse(root / "embedded/users.xml").getroot().find("profiles")
    assert image_profiles is not None and embedded_profiles is not None

    def settings(profiles: ElementTree.Element) -> dict[str, dict[str, str | None]]:
        return {profile.tag: {setting.tag: setting.text for setting in profile} for profile in profiles}

    image, embedded = settings(image_profiles), settings(embedded_profiles)
    assert {name: image[name] for name in embedded} == embedded
    assert set(image) - set(embedded) == {"producer"}

    def names(table: str) -> set[str]:
        return set(http_query(server, f"SELECT name FROM system.{table}").split())

    known = names("settings")
    assert {setting for profile in image.values() for setting in profile} - {"constraints"} <= known
    assert {constraint.tag for profile in image_profiles for constraint in profile.iterfind("constraints/*")} <= known
    server_config = ElementTree.parse(root / "config.d/server.xml").getroot()
    merge_tree = server_config.find("merge_tree")
    assert merge_tree is not None and {setting.tag for setting in merge_tree} <= names("merge_tree_settings")
    # Sections, and listen_host, which system.server_settings does not list.
    unlisted = {"logger", "rocksdb", "merge_tree", "listen_host"}
    assert {element.tag for element in server_config} - unlisted <= names("server_settings")
