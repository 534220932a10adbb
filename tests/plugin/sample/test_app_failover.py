"""An application's own tests under failover, written with dqlitepy's pytest plugin.

The application is a few lines here (yours imports its own code): it keeps a shop's
orders in a dqlitepy database, and places each order under an id of its own, so that an
order whose outcome was unknown (the leader died or froze before it answered) can be
placed again without being placed twice.
"""

from __future__ import annotations

import dqlitepy
from dqlitepy.testing import ClusterFactory, NodeFactory

# -- the application ------------------------------------------------------------------------


def open_shop(servers: list[str]) -> dqlitepy.Connection:
    """A connection to the shop's database; the driver finds the leader among ``servers``."""
    conn = dqlitepy.connect(
        "shop",
        servers=servers,
        isolation_level=None,  # autocommit: each statement is a transaction
        request_timeout=2.0,  # a frozen leader is given up on after 2 s
        attempt_timeout=1.0,  # and costs 1 s in the search for the next
        leader_timeout=20.0,  # time to find a leader, elections included
    )
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, item TEXT)")
    return conn


def place_order(conn: dqlitepy.Connection, order_id: str, item: str) -> None:
    """Place an order; one whose outcome is unknown is placed again, never twice."""
    for attempt in range(5):
        try:
            conn.execute("INSERT OR IGNORE INTO orders VALUES (?, ?)", (order_id, item))
            return
        except dqlitepy.OperationalError as exc:
            # Leadership lost, connection lost: "rolled back" or "unknown". The driver
            # finds the new leader on the next call.
            if attempt == 4:
                raise
            print(f"order {order_id}: {exc} (outcome: {exc.outcome}); placing it again")


def orders(conn: dqlitepy.Connection) -> list[tuple[str, str]]:
    return [(i, item) for i, item in conn.execute("SELECT id, item FROM orders ORDER BY id")]


# -- its tests ------------------------------------------------------------------------------


def test_an_acknowledged_order_survives_the_leaders_death(dqlitepy_cluster: ClusterFactory) -> None:
    cluster = dqlitepy_cluster(size=3)
    shop = open_shop(cluster.addresses)
    place_order(shop, "o1", "book")  # acknowledged: a majority has it on disk

    old = cluster.kill(cluster.wait_for_leader())  # SIGKILL: a crash
    new = cluster.wait_for_leader()  # elected by the two others
    assert new is not old

    assert orders(shop) == [("o1", "book")]  # the same connection, on the new leader
    place_order(shop, "o2", "pen")
    assert orders(cluster.connect("shop")) == [("o1", "book"), ("o2", "pen")]


def test_an_order_placed_as_the_leader_froze_is_kept_once(dqlitepy_cluster: ClusterFactory) -> None:
    cluster = dqlitepy_cluster(size=3)
    shop = open_shop(cluster.addresses)
    frozen = cluster.pause(cluster.wait_for_leader())  # SIGSTOP: alive, but silent

    place_order(shop, "o1", "book")  # times out on the frozen leader, then placed again
    assert cluster.wait_for_leader() is not frozen

    cluster.resume(frozen)  # it comes back as a follower
    cluster.wait_for_leader()
    assert orders(shop) == [("o1", "book")]


def test_a_restarted_node_catches_up_on_orders(dqlitepy_cluster: ClusterFactory) -> None:
    cluster = dqlitepy_cluster(size=3)
    shop = open_shop(cluster.addresses)
    down = cluster.kill(cluster.followers()[0])
    place_order(shop, "o1", "book")  # two of three nodes are a majority

    cluster.restart(down)  # same address, same data directory
    cluster.transfer(down)  # make it the leader: it must have caught up
    assert orders(down.connect("shop")) == [("o1", "book")]


def test_orders_survive_a_restart_of_a_single_node(dqlitepy_node: NodeFactory) -> None:
    node = dqlitepy_node()  # one standalone node
    shop = open_shop([node.address])
    place_order(shop, "o1", "book")

    node.kill()
    node.restart()
    assert orders(open_shop([node.address])) == [("o1", "book")]


def test_the_shop_through_sqlalchemy(dqlitepy_node: NodeFactory) -> None:
    import sqlalchemy

    node = dqlitepy_node(in_process=True)  # a node inside the test process: quick
    engine = sqlalchemy.create_engine(node.sqlalchemy_url("shop"))
    with engine.begin() as db:
        db.execute(sqlalchemy.text("CREATE TABLE orders (id TEXT PRIMARY KEY, item TEXT)"))
        db.execute(sqlalchemy.text("INSERT INTO orders VALUES ('o1', 'book')"))
    with engine.connect() as db:
        assert db.execute(sqlalchemy.text("SELECT item FROM orders")).scalar() == "book"
    engine.dispose()
