"""What we say to Flower 1.39 and what we read back: command lines, TOML, CLI output.

Builds the ``flower-superlink`` and ``flower-supernode`` command lines (Fleet API over
gRPC-rere on ``127.0.0.1``, runtime dependency installation off, ``--insecure`` only without
TLS), the ``flwr`` CLI's ``config.toml`` (one connection, ``fedveil``), run configs and node
configs; and reads the run id ``flwr run`` announces, the node id a SuperNode logs, and a run's
status from ``flwr ls --format json``. Every value written is checked to round-trip: a key that
is not a bare dotted TOML key, a non-finite number or a quoted node-config string is refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from common.config import ConfigValue
from deployment.errors import DeployError
from deployment.layout import HOST, Layout, Ports

CONNECTION: Final = "fedveil"
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def toml_value(value: ConfigValue) -> str:
    """Return ``value`` as a TOML value (a JSON string literal is a valid TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value!r} to TOML")
        return repr(value)
    return json.dumps(value)


def toml_lines(flat: Mapping[str, ConfigValue]) -> list[str]:
    """Return ``key = value`` lines for flat dotted keys (TOML dotted keys, nested tables)."""
    lines = []
    for key, value in flat.items():
        if not _BARE_KEY.match(key):
            raise ValueError(f"config key {key!r} is not a bare dotted TOML key")
        lines.append(f"{key} = {toml_value(value)}")
    return lines


def node_config_arg(values: Mapping[str, ConfigValue]) -> str:
    """Return a ``--node-config`` string: space-separated ``key=value``, strings quoted."""
    parts = []
    for key, value in values.items():
        if isinstance(value, str) and ('"' in value or "'" in value or "\\" in value):
            raise DeployError(f"node config `{key}` cannot contain quotes or backslashes: {value}")
        parts.append(f"{key}={toml_value(value)}")
    return " ".join(parts)


def flwr_config_toml(control_port: int, *, ca_cert: Path | None) -> str:
    """Return the CLI's ``config.toml``: one connection, ``fedveil``, the default."""
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{HOST}:{control_port}"',
    ]
    if ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(ca_cert))}")
    return "\n".join(lines) + "\n"


def superlink_command(
    bin_dir: Path, layout: Layout, ports: Ports, *, tls: bool, auth: bool
) -> list[str]:
    """Return the ``flower-superlink`` command line."""
    command = [
        str(bin_dir / "flower-superlink"),
        "--host",
        HOST,
        "--port",
        str(ports.control),
        "--fleet-api-type",
        "grpc-rere",
        "--fleet-api-address",
        f"{HOST}:{ports.fleet}",
        "--database",
        str(layout.database),
        "--disable-runtime-dependency-installation",
    ]
    if tls:
        command += [
            "--ssl-ca-certfile",
            str(layout.tls / "ca.pem"),
            "--ssl-certfile",
            str(layout.tls / "server.pem"),
            "--ssl-keyfile",
            str(layout.tls / "server.key"),
        ]
    else:
        command.append("--insecure")
    if auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(
    bin_dir: Path,
    layout: Layout,
    ports: Ports,
    index: int,
    *,
    tls: bool,
    auth: bool,
    node_config: str,
) -> list[str]:
    """Return SuperNode ``index``'s ``flower-supernode`` command line."""
    command = [
        str(bin_dir / "flower-supernode"),
        "--superlink",
        f"{HOST}:{ports.fleet}",
        "--grpc-rere",
        "--host",
        HOST,
        "--port",
        str(ports.nodes[index]),
        "--node-config",
        node_config,
    ]
    command += ["--root-certificates", str(layout.tls / "ca.pem")] if tls else ["--insecure"]
    if auth:
        command += ["--auth-supernode-private-key", str(layout.node(index) / "node.key")]
    return command


def flwr_run_command(bin_dir: Path, layout: Layout) -> list[str]:
    """Return the ``flwr run`` command that starts the staged app with its run config."""
    return [
        str(bin_dir / "flwr"),
        "run",
        str(layout.app),
        CONNECTION,
        "--run-config",
        str(layout.run_config),
        "--stream",
    ]


def parse_run_id(text: str) -> int | None:
    """Return the run id ``flwr run`` announced in ``text``, if any."""
    found = _RUN_ID.search(text)
    return int(found.group(1)) if found else None


def parse_node_id(text: str) -> int | None:
    """Return the node id a SuperNode logged once it connected, if any."""
    found = _NODE_ID.search(text)
    return int(found.group(1)) if found else None


def json_in(text: str) -> dict[str, Any] | None:
    """Return the JSON object a ``flwr ... --format json`` command printed, if any."""
    try:
        doc = json.loads(text[text.index("{") :])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def run_status(doc: Mapping[str, Any], run_id: int) -> tuple[str, str]:
    """Return ``(status, details)`` of ``run_id`` from ``flwr ls --format json`` output."""
    for run in doc.get("runs", []):
        if str(run.get("run-id")) == str(run_id):
            return str(run.get("status", "unknown")), str(run.get("status-details", ""))
    return "unknown", f"run {run_id} is not listed by the SuperLink"
