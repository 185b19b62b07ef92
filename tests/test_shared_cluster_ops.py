"""Shared mode on a Redis Cluster under what its operators do to it: a
failover (by hand, or a master killed and its replica promoted) and the
namespace's slot migrated to another node while daemons serve. The daemon
follows the slot to its new master, within what the Cluster takes to
promote one; meanwhile a request fails in one line with exit status 3,
naming the node. Mid-migration it follows ASK redirects as redis-py's
Cluster client does (a read is served); a change, which the engine
refuses while the slot's keys are split between the nodes or not made
yet (TRYAGAIN), is sent again for a while, then fails in one line (exit
3, nothing done). No request is applied twice, and a watch open
meanwhile goes on.

Each test runs a Cluster of its own (tests/redis_servers.py), whose
topology it changes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest
from redis.crc import key_slot

from tests.conftest import Daemon, wait_until
from tests.fleet import Watching, get_json, redis_of
from tests.redis_servers import RedisClusterServers

# What a Cluster takes to promote a replica of a killed master
# (cluster-node-timeout 2 s, then an election), with a loaded machine's
# margin.
PROMOTION = 40.0


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    Callable[..., RedisClusterServers]
]:
    made: list[RedisClusterServers] = []

    def make(replicas: int = 0) -> RedisClusterServers:
        cluster = RedisClusterServers(tmp_path_factory.mktemp("own-cluster"), replicas=replicas)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


def _namespace_on(cluster: RedisClusterServers, index: int) -> str:
    """A namespace whose slot the master ``cluster.nodes[index]`` holds."""
    node = cluster.nodes[index]
    mine = next(line.split() for line in node.cli("CLUSTER", "NODES").splitlines()
                if "myself" in line.split()[2])
    assert "master" in mine[2], mine
    ranges = [tuple(int(x) for x in (r + "-" + r).split("-")[:2]) if "-" not in r
              else tuple(int(x) for x in r.split("-")) for r in mine[8:] if r[0] != "["]
    for n in range(10_000):
        name = f"ops{n}"
        slot = key_slot(_counters(name).encode())
        if any(low <= slot <= high for low, high in ranges):
            return name
    raise AssertionError("no namespace found on that node")


def _counters(namespace: str) -> str:
    return "sd:{" + namespace + "}:counters"


def _fails_in_one_line_naming_a_node(
    r: subprocess.CompletedProcess[str], status: int = 3
) -> None:
    err = r.stderr
    assert r.returncode == status, err
    assert err.startswith("sessionctl: error: the shared engine redis://127.0.0.1:"), err
    assert err.count("\n") == 1, err


def test_a_killed_master_is_followed_to_the_replica_promoted_in_its_place(
    make_cluster: Callable[..., RedisClusterServers], make_daemon_on: Callable[..., Daemon],
) -> None:
    cluster = make_cluster(replicas=1)
    # The namespace's master is the very node the URL names: the daemon
    # must find the Cluster through the others once it is gone.
    namespace = _namespace_on(cluster, 0)
    master = cluster.nodes[0]
    d = make_daemon_on(backend=master.url, namespace=namespace)
    r = d.ctl("create", "--id", "s1", "--meta", "k=before")
    assert r.returncode == 0, r.stderr
    # Replication is asynchronous: the replica has it before the kill.
    assert master.cli("WAIT", "1", "10000").strip() == "1"
    replica = cluster.replica_of(master)
    master.kill()

    failures: list[subprocess.CompletedProcess[str]] = []

    def served() -> bool:
        r = d.ctl("get", "s1", "--json")
        if r.returncode != 0:
            failures.append(r)
            return False
        return bool(json.loads(r.stdout)["meta"] == {"k": "before"})

    try:
        wait_until(served, PROMOTION, "the daemon to follow the promoted replica")
    except AssertionError as exc:
        said = failures[-1].stderr if failures else ""
        raise AssertionError(f"{exc}; last said: {said}log:\n{d.log_text()}") from None
    for failed in failures:
        _fails_in_one_line_naming_a_node(failed)
    assert "role:master" in replica.cli("INFO", "replication")
    r = d.ctl("set", "s1", "k", "after")
    assert r.returncode == 0, r.stderr
    assert get_json(d, "s1")["meta"] == {"k": "after"}
    assert d.proc is not None and d.proc.poll() is None


def test_a_failover_by_hand_is_followed_and_an_open_watch_goes_on(
    make_cluster: Callable[..., RedisClusterServers], make_daemon_on: Callable[..., Daemon],
) -> None:
    cluster = make_cluster(replicas=1)
    namespace = _namespace_on(cluster, 1)
    master = cluster.nodes[1]
    d = make_daemon_on(backend=cluster.url, namespace=namespace)
    w = Watching(d)
    w.started(d)
    r = d.ctl("create", "--id", "s1")
    assert r.returncode == 0, r.stderr
    w.until(lambda e: e.kind == "created" and e.sid == "s1")
    replica = cluster.replica_of(master)

    def took_over() -> bool:
        return "role:master" in replica.cli("INFO", "replication")

    # A manual failover gives up when the replica does not catch up within
    # its own 5 s (a loaded machine): asked again then.
    for _ in range(3):
        assert replica.cli("CLUSTER", "FAILOVER").strip() == "OK"
        try:
            wait_until(took_over, PROMOTION / 3, "the replica to take over")
            break
        except AssertionError:
            continue
    wait_until(took_over, PROMOTION, "the replica to take over")
    # The watch's blocked read on the old master was unblocked by the
    # failover (UNBLOCKED ...): it reads on, on the new master.
    r = d.ctl("set", "s1", "k", "v")
    assert r.returncode == 0, r.stderr
    w.until(lambda e: e.kind == "updated" and e.sid == "s1")
    assert w.error is None, (w.error, d.log_text())
    assert "UNBLOCKED" not in d.log_text()


def test_requests_expiry_and_a_watch_follow_the_namespaces_slot_as_it_migrates(
    make_cluster: Callable[..., RedisClusterServers], make_daemon_on: Callable[..., Daemon],
) -> None:
    cluster = make_cluster()
    namespace = _namespace_on(cluster, 0)
    source, target = cluster.nodes[0], cluster.nodes[1]
    d = make_daemon_on(backend=cluster.url, namespace=namespace)
    prefix = "sd:{" + namespace + "}:"
    for sid in ("moved", "stays"):
        r = d.ctl("create", "--id", sid, "--meta", "n=0")
        assert r.returncode == 0, r.stderr
    w = Watching(d)
    w.started(d)

    slot = str(key_slot(prefix.encode()))
    source_id = source.cli("CLUSTER", "MYID").strip()
    target_id = target.cli("CLUSTER", "MYID").strip()
    assert target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id).strip() == "OK"
    assert source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id).strip() == "OK"

    def migrate(*keys: str) -> None:
        out = source.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
        assert out.strip() == "OK", out

    migrate(prefix + "s:moved")
    # Its key is on the node the slot moves to: read there (ASK), the others
    # where they are.
    assert get_json(d, "moved")["meta"] == {"n": "0"}
    # A change names keys on both nodes, or keys that do not exist yet (an
    # index, a new session): refused by the engine (TRYAGAIN) until the
    # migration ends; sent again a while, then one line, exit 3, nothing
    # done.
    for sid in ("moved", "stays"):
        r = d.ctl("set", sid, "n", "1")
        _fails_in_one_line_naming_a_node(r)
        assert "moving the namespace's slot" in r.stderr, r.stderr
        assert get_json(d, sid)["version"] == 1

    keys = source.cli("CLUSTER", "GETKEYSINSLOT", slot, "1000").split()
    migrate(*keys)
    # The target first, as redis-cli's reshard does: until it owns the
    # slot, it sends what comes without ASKING back to the source.
    for node in (target, source, cluster.nodes[2]):
        assert node.cli("CLUSTER", "SETSLOT", slot, "NODE", target_id).strip() == "OK"

    # On the new node (MOVED), whose scripts are not loaded yet: each request
    # done once.
    for n in (2, 3):
        r = d.ctl("set", "moved", "n", str(n))
        assert r.returncode == 0, r.stderr
        r = d.ctl("set", "stays", "n", str(n))
        assert r.returncode == 0, r.stderr
    assert get_json(d, "moved")["version"] == 3
    assert get_json(d, "stays")["version"] == 3
    w.until(lambda e: e.kind == "updated" and e.sid == "moved" and e.session is not None
            and e.session.meta == {"n": "3"})
    assert w.error is None, (w.error, d.log_text())
    # The lease and the index of deadlines moved with the slot: expiry goes
    # on there, on its own.
    r = d.ctl("create", "--id", "brief", "--ttl", "1")
    assert r.returncode == 0, r.stderr
    with redis_of(cluster.url, cluster=True) as client:
        wait_until(lambda: client.hget(prefix + "s:brief", "x") is not None, 30,
                   "the session to expire on the timer after the migration")
    assert d.proc is not None and d.proc.poll() is None


def test_a_cluster_that_is_down_fails_requests_as_unreachable_and_is_served_once_up(
    make_cluster: Callable[..., RedisClusterServers], make_daemon_on: Callable[..., Daemon],
) -> None:
    cluster = make_cluster()
    namespace = _namespace_on(cluster, 0)
    master, other = cluster.nodes[0], cluster.nodes[2]
    d = make_daemon_on(backend=cluster.url, namespace=namespace)
    r = d.ctl("create", "--id", "s1")
    assert r.returncode == 0, r.stderr
    # Another master dies, with no replica: slots are uncovered, and the
    # whole Cluster answers CLUSTERDOWN, the namespace's master too.
    other.kill()
    wait_until(lambda: "cluster_state:fail" in master.cli("CLUSTER", "INFO"), PROMOTION,
               "the Cluster to say it is down")
    for args in (("get", "s1"), ("set", "s1", "k", "v"), ("create",)):
        r = d.ctl(*args)
        _fails_in_one_line_naming_a_node(r)
        assert "Cluster is down" in r.stderr and "nothing of this request was done" in r.stderr
    other.start()
    wait_until(lambda: d.ctl("set", "s1", "k", "v").returncode == 0, PROMOTION,
               "the daemon to be served once the Cluster is up")
    assert get_json(d, "s1")["version"] == 2
    assert d.proc is not None and d.proc.poll() is None


def test_a_user_the_clusters_acl_refuses_cluster_slots_is_told_in_one_line_at_start(
    make_cluster: Callable[..., RedisClusterServers], make_daemon_on: Callable[..., Daemon],
) -> None:
    cluster = make_cluster()
    for node in cluster.nodes:
        node.cli("ACL", "SETUSER", "nocluster", "on", ">pw-nocluster", "~sd:*", "+@all",
                 "-cluster")
    d = make_daemon_on(backend=f"redis://nocluster:pw-nocluster@{cluster.nodes[0].address}",
                       start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1, d.log_text()
    said = [line for line in d.log_text().splitlines() if "ERROR" in line]
    assert len(said) == 1 and "Traceback" not in d.log_text(), d.log_text()
    assert "CLUSTER SLOTS" in said[0] and "+@all on the keys ~sd:*" in said[0], said
    assert "pw-nocluster" not in said[0], said
