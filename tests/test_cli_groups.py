"""`raftka consume --group` and `raftka group ...` against a real node process."""

from __future__ import annotations

import json

from tests.test_cli import Cli, cli, new_topic, node, ok, one_line_error  # noqa: F401 - fixtures


def test_consume_with_a_group_commits_and_group_commands_manage_it(cli: Cli):  # noqa: F811
    topic = new_topic(cli, partitions=2)
    ok(cli("produce", topic, "--partition", "0", stdin=b"a\nb\nc\n"))
    ok(cli("produce", topic, "--partition", "1", stdin=b"d\ne\n"))
    group = f"g-{topic}"

    first = ok(
        cli("consume", topic, "--group", group, "--from-beginning", "-n", "5", "--timeout-ms", "10000")
    )
    assert sorted(first.split()) == ["a", "b", "c", "d", "e"]
    again = cli("consume", topic, "--group", group, "-n", "1", "--timeout-ms", "1500")
    assert again.returncode == 0 and again.stdout.decode().split() == []  # the group committed all five

    listed = json.loads(ok(cli("group", "list", "--format", "json")))
    assert group in json.dumps(listed)
    described = json.loads(ok(cli("group", "describe", group, "--format", "json")))
    assert described["group"] == group and described["state"] == "empty", described
    committed = {(o["topic"], o["partition"]): o["committed_offset"] for o in described["offsets"]}
    assert committed == {(topic, 0): 3, (topic, 1): 2}, described
    assert described["total_lag"] == 0, described
    table = ok(cli("group", "describe", group))
    assert group in table or topic in table

    dry = cli("group", "reset-offsets", group, "--topic", topic, "--to-earliest", "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stderr.decode(), dry
    assert [line.split()[-1] for line in dry.stdout.decode().splitlines()[1:]] == ["0", "0"]
    assert ok(cli("consume", topic, "--group", group, "-n", "1", "--timeout-ms", "1500")).split() == []
    ok(cli("group", "reset-offsets", group, "--topic", topic, "--to-earliest"))
    replay = ok(cli("consume", topic, "--group", group, "-n", "5", "--timeout-ms", "10000"))
    assert sorted(replay.split()) == ["a", "b", "c", "d", "e"]

    assert "deleted" in ok(cli("group", "delete", group))
    assert "group" in one_line_error(cli("group", "describe", group))
    assert "group" in one_line_error(cli("group", "delete", group))
