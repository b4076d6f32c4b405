"""The Node.js client (client/node) against a real picklejaild, and against a scripted one.

Every `load` fixture of both manifests goes through `node client/node/cli.js --json` by
the shm and the inline transport and must match the manifest's dtype, shape and sha256.
A hand-written os.system pickle must be refused with forbidden_global, and no shm object
may outlive its load. A scripted stand-in daemon then checks what the real one cannot be
made to do: reply lines and inline bytes in any chunking, and images that break the
safetensors rules (the client must validate them itself).
"""

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon_support import Daemon, daemon_binary

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
NODE = shutil.which("node")
CLI = REPO / "client" / "node" / "cli.js"
MODULE = REPO / "client" / "node" / "picklejail.js"
NODE_TIMEOUT_S = 60
SCRIPTED_TIMEOUT_S = 15  # the scripted daemon answers at once; a hang is a client bug

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not on PATH (apt-get install nodejs)")
needs_daemon = pytest.mark.skipif(not daemon_binary().is_file(),
                                  reason=f"picklejaild not built at {daemon_binary()}")

# GLOBAL os.system, "echo", TUPLE1, REDUCE, STOP: written as opcodes, never unpickled.
OS_SYSTEM_PICKLE = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echo\x85R."


def load_cases():
    for manifest in sorted(FIXTURES.glob("torch-*/manifest.json")):
        for entry in json.loads(manifest.read_text()):
            if entry["expect"] == "load":
                yield pytest.param(manifest.parent / entry["file"], entry,
                                   id=f"{manifest.parent.name}/{entry['file']}")


def run_cli(socket_path, *args, timeout=NODE_TIMEOUT_S):
    return subprocess.run([NODE, str(CLI), "--socket", str(socket_path), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def run_node(script, *args, timeout=NODE_TIMEOUT_S):
    """Run a snippet with `pj` = the client module; returns its stdout parsed as JSON."""
    code = f"const pj = require({json.dumps(str(MODULE))});\n{script}"
    proc = subprocess.run([NODE, "-e", code, "--", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def our_shm_objects():
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"picklejail-{os.geteuid()}-")}


# ---------------------------------------------------------------- against picklejaild

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("node-daemon"))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shm_names_seen():
    """Every shm object the shm loads of this module received."""
    return set()


@needs_daemon
@pytest.mark.parametrize("transport", ["shm", "inline"])
@pytest.mark.parametrize("ckpt,entry", load_cases())
def test_fixture_matches_manifest(daemon, shm_names_seen, ckpt, entry, transport):
    policy = entry.get("policy", "checkpoint")
    proc = run_cli(daemon.socket_path, "--json", "--transport", transport, "--policy", policy, ckpt)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    reply, tensors, metadata = out["reply"], out["tensors"], out["__metadata__"]
    assert reply["transport"] == transport and reply["tensors"] == len(tensors)
    assert metadata.get("format") == "pt"
    if transport == "shm":
        shm_names_seen.add(reply["shm_name"])
        assert not os.path.exists(reply["shm_path"]), "the shm object was not released"

    want_names = set(entry["tensors"])
    assert set(tensors) <= want_names and set(out["aliases"]) <= want_names
    for name, want in entry["tensors"].items():
        stored = name if name in tensors else metadata[name]  # an alias of a tied tensor
        assert out["aliases"].get(name, name) == stored
        got = tensors[stored]
        want_dtype, want_shape = want["dtype"], want["shape"]
        if want_dtype == "C128":  # stored as F64 with a trailing dimension of 2
            want_dtype, want_shape = "F64", want_shape + [2]
            assert got.get("complex128") is True, name
        assert (got["dtype"], got["shape"]) == (want_dtype, want_shape), name
        assert got["sha256"] == want["sha256"], f"{name}: bytes differ"


@needs_daemon
def test_text_output_one_line_per_tensor(daemon):
    ckpt = FIXTURES / "torch-2.11" / "views.pt"
    entry = next(e for e in json.loads((FIXTURES / "torch-2.11" / "manifest.json").read_text())
                 if e["file"] == "views.pt")
    proc = run_cli(daemon.socket_path, "--policy", "checkpoint", ckpt)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert lines and all(len(fields) == 4 for fields in lines)
    for name, dtype, shape, digest in lines:
        want = entry["tensors"][name]
        assert (dtype, json.loads(shape), digest) == (want["dtype"], want["shape"], want["sha256"])


@needs_daemon
@pytest.mark.parametrize("transport", ["shm", "inline"])
def test_os_system_pickle_is_refused(daemon, tmp_path, transport):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(OS_SYSTEM_PICKLE)
    evil.chmod(0o644)
    proc = run_cli(daemon.socket_path, "--transport", transport, evil)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("picklejail: forbidden_global: "), proc.stderr
    assert "os.system" in proc.stderr


@needs_daemon
def test_module_api_errors_and_views(daemon, tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(OS_SYSTEM_PICKLE)
    ckpt = FIXTURES / "torch-2.11" / "views.pt"
    result = run_node("""
        const [sock, evil, ckpt] = process.argv.slice(1);
        (async () => {
          const out = {};
          out.ping = await pj.ping({ socket: sock });
          try { await pj.load(evil, { socket: sock }); } catch (e) {
            out.err = { isError: e instanceof Error, isPj: e instanceof pj.PicklejailError,
                        code: e.code, global: e.global, message: e.message };
          }
          const r = await pj.load(ckpt, { socket: sock, policy: 'checkpoint',
                                          transport: 'inline' });
          const full = r.tensors.get('full');
          out.view = full.data.buffer === r.image.buffer;   // a view, not a copy
          out.tied = r.get('tied_a') === full;
          out.first = Array.from(pj.typedArray(full).slice(0, 2));
          const sel = await pj.load(ckpt, { socket: sock, policy: 'checkpoint', select: ['row3'] });
          out.selected = [...sel.tensors.keys()];
          const c = await pj.Client.connect({ socket: sock });
          out.inspected = (await c.inspect(ckpt)).tensors.length;
          out.shm_objects = (await c.stats()).shm_objects;
          c.close();
          console.log(JSON.stringify(out));
        })().catch((e) => { console.error(e); process.exit(3); });
    """, daemon.socket_path, evil, ckpt)
    assert result["ping"]["protocol"] == 1
    err = result["err"]
    assert err["isError"] and err["isPj"]
    assert (err["code"], err["global"]) == ("forbidden_global", "os.system")
    assert result["view"] and result["tied"]
    assert len(result["first"]) == 2
    assert result["selected"] == ["row3"]
    assert result["inspected"] >= 9
    assert result["shm_objects"] == 0


@needs_daemon
def test_no_shm_object_left(daemon, shm_names_seen):
    """Runs after the fixture loads (definition order): everything they received is gone."""
    for name in shm_names_seen:
        assert not os.path.exists(f"/dev/shm/{name}"), name
    assert daemon.stats()["shm_objects"] == 0
    assert not (our_shm_objects() & shm_names_seen)


# ---------------------------------------------------------------- against a scripted daemon

def safetensors(tensors, metadata=None, header_override=None):
    """A safetensors image: tensors is a list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if header_override is not None:
        header = header_override
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 64)
    return struct.pack("<Q", len(text)) + text + data


GOOD_TENSORS = [("a.weight", "F32", [2, 3], struct.pack("<6f", *range(6))),
                ("b", "I64", [2], struct.pack("<2q", 7, -1)),
                ("flag", "BOOL", [], b"\x01"),
                ("empty", "F16", [0], b"")]
GOOD = safetensors(GOOD_TENSORS, {"format": "pt", "tied": "b"})


class ScriptedDaemon:
    """Answers each request line with `respond(request)`: a list of byte strings, each sent
    on its own with a pause between them, so that the client sees those chunk boundaries."""

    def __init__(self, path):
        self.path = str(path)
        self.respond = None
        self.requests = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self):
        self._server.close()

    def _serve(self):
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn):
        buffer = b""
        with conn:
            try:
                while True:
                    while b"\n" not in buffer:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    self.requests.append(request)
                    for i, piece in enumerate(self.respond(request)):
                        if piece is None:  # hang up here
                            return
                        if i:
                            time.sleep(0.002)
                        conn.sendall(piece)
            except OSError:
                return


def run_scripted(scripted, *args):
    return run_cli(scripted.path, *args, timeout=SCRIPTED_TIMEOUT_S)


@pytest.fixture
def scripted(tmp_path):
    d = ScriptedDaemon(tmp_path / "scripted.sock")
    yield d
    d.close()


def reply_line(request, **fields):
    return json.dumps({"ok": True, "id": request.get("id"), **fields}).encode() + b"\n"


def inline(image, chunking, size=None):
    """A responder sending the load reply and the image split as `chunking` says."""
    def respond(request):
        assert request["op"] == "load" and request["transport"] == "inline"
        assert os.path.isabs(request["path"])
        stream = reply_line(request, size=len(image) if size is None else size,
                            tensors=4, transport="inline", format="zip") + image
        if chunking == "together":
            return [stream]
        if chunking == "bytes":
            return [stream[i:i + 1] for i in range(len(stream))]
        if chunking == "split-line":  # half a line, then the rest with all of the image
            return [stream[:10], stream[10:]]
        if chunking == "odd":  # the line's end and the image's start share a chunk
            cut = stream.index(b"\n") - 3
            return [stream[:cut], stream[cut:cut + 20], stream[cut + 20:cut + 90],
                    stream[cut + 90:]]
        raise AssertionError(chunking)
    return respond


@pytest.mark.parametrize("chunking", ["together", "bytes", "split-line", "odd"])
def test_inline_stream_in_any_chunking(scripted, tmp_path, chunking):
    scripted.respond = inline(GOOD, chunking)
    proc = run_scripted(scripted, "--json", "--transport", "inline", "some/relative.pt")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["aliases"] == {"tied": "b"}
    for name, dtype, shape, raw in GOOD_TENSORS:
        assert out["tensors"][name] == {"dtype": dtype, "shape": shape,
                                        "sha256": hashlib.sha256(raw).hexdigest()}
    assert scripted.requests[0]["path"] == str(Path.cwd() / "some/relative.pt")


def test_two_inline_loads_on_one_connection(scripted):
    """The bytes after an image belong to the next reply: nothing may be lost or reused."""
    other = safetensors([("x", "U8", [3], b"xyz")])
    images = iter([GOOD, other])

    def respond(request):
        image = next(images)
        return [reply_line(request, size=len(image), transport="inline") + image[:5], image[5:]]
    scripted.respond = respond
    result = run_node("""
        (async () => {
          const c = await pj.Client.connect({ socket: process.argv[1] });
          const [a, b] = await Promise.all([c.load('/a', { transport: 'inline' }),
                                            c.load('/b', { transport: 'inline' })]);
          c.close();
          console.log(JSON.stringify([[...a.tensors.keys()], b.tensors.get('x').data.toString()]));
        })().catch((e) => { console.error(e); process.exit(3); });
    """, scripted.path, timeout=SCRIPTED_TIMEOUT_S)
    assert result == [["a.weight", "b", "flag", "empty"], "xyz"]


def header_with(**changes):
    """GOOD's header with one entry changed."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, raw in GOOD_TENSORS:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    for name, value in changes.items():
        header[name] = value
    return header


DATA = b"".join(raw for *_, raw in GOOD_TENSORS)


def bad_header_image(header):
    return safetensors([("pad", "U8", [len(DATA)], DATA)], header_override=header)


BAD_IMAGES = {
    "short": b"\x01\x00\x00",
    "header-length-past-end": struct.pack("<Q", 1 << 40) + b"{}",
    "header-not-json": struct.pack("<Q", 3) + b"{x}",
    "header-not-object": struct.pack("<Q", 2) + b"[]",
    "header-not-utf8": struct.pack("<Q", 3) + b'"\xff"',
    "unknown-dtype": bad_header_image(header_with(b={"dtype": "I128", "shape": [2],
                                                     "data_offsets": [24, 40]})),
    "negative-dim": bad_header_image(header_with(b={"dtype": "I64", "shape": [-2],
                                                    "data_offsets": [24, 40]})),
    "float-dim": bad_header_image(header_with(b={"dtype": "I64", "shape": [2.5],
                                                 "data_offsets": [24, 40]})),
    "extra-field": bad_header_image(header_with(b={"dtype": "I64", "shape": [2],
                                                   "data_offsets": [24, 40], "x": 1})),
    "bytes-not-numel": bad_header_image(header_with(b={"dtype": "I64", "shape": [3],
                                                       "data_offsets": [24, 40]})),
    "offsets-past-end": bad_header_image(header_with(flag={"dtype": "BOOL", "shape": [],
                                                           "data_offsets": [41, 42]})),
    "overlap": safetensors([("pad", "U8", [6], b"abcdef")], header_override={
        "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "y": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}),
    "same-bytes-twice": safetensors([("pad", "U8", [4], b"abcd")], header_override={
        "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "y": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}),
    "hole": bad_header_image(header_with(b={"dtype": "I64", "shape": [1],
                                            "data_offsets": [24, 32]})),
    "trailing-bytes": GOOD + b"\x00",
    "alias-to-nothing": safetensors(GOOD_TENSORS, {"format": "pt", "tied": "nope"}),
    "metadata-not-strings": safetensors(GOOD_TENSORS, {"format": 1}),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_invalid_image_is_rejected(scripted, name):
    scripted.respond = inline(BAD_IMAGES[name], "together")
    proc = run_scripted(scripted, "--transport", "inline", "/x.pt")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("picklejail: malformed: invalid safetensors image"), proc.stderr


def test_connection_closed_before_all_inline_bytes(scripted):
    scripted.respond = lambda r: [reply_line(r, size=len(GOOD) + 10, transport="inline") + GOOD,
                                  None]
    proc = run_scripted(scripted, "--transport", "inline", "/x.pt")
    assert proc.returncode == 1
    assert proc.stderr.startswith("picklejail: protocol_error: "), proc.stderr


def test_error_reply_carries_code_and_global(scripted):
    error = {"code": "forbidden_global", "global": "posix.system",
             "message": "at byte 2: global posix.system is not allowed by policy \"weights\""}

    def respond(request):  # the error line in two pieces
        line = json.dumps({"ok": False, "id": request["id"], "error": error}).encode() + b"\n"
        return [line[:30], line[30:]]
    scripted.respond = respond
    proc = run_scripted(scripted, "/x.pt")
    assert proc.returncode == 1
    assert proc.stderr == f"picklejail: forbidden_global: {error['message']}\n"


def test_client_timeout(scripted):
    scripted.respond = lambda r: [] if r["op"] == "load" else [reply_line(r, protocol=1)]
    result = run_node("""
        (async () => {
          const c = await pj.Client.connect({ socket: process.argv[1], timeout: 300 });
          await new Promise((r) => setTimeout(r, 500));   // idle between requests: no timeout
          const ping = await c.ping();
          const t0 = Date.now();
          const e = await c.load('/x.pt').catch((err) => err);
          c.close();
          console.log(JSON.stringify([ping.protocol, e.code, Date.now() - t0 < 5000]));
        })().catch((e) => { console.error(e); process.exit(3); });
    """, scripted.path, timeout=SCRIPTED_TIMEOUT_S)
    assert result == [1, "timeout", True]


def test_socket_from_environment_and_unavailable(scripted, tmp_path):
    scripted.respond = lambda r: [reply_line(r, version="9", protocol=1)]
    env = {**os.environ, "PICKLEJAIL_SOCKET": scripted.path}
    proc = subprocess.run([NODE, "-e", f"require({json.dumps(str(MODULE))}).ping()"
                           ".then((r) => console.log(JSON.stringify(r)))"],
                          capture_output=True, text=True, env=env, timeout=NODE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"version": "9", "protocol": 1}
    proc = run_cli(tmp_path / "nobody-home.sock", "/x.pt")
    assert proc.returncode == 1 and proc.stderr.startswith("picklejail: unavailable: ")


def test_memfd_and_usage_errors(tmp_path):
    proc = run_cli(tmp_path / "s.sock", "--transport", "memfd", "/x.pt")
    assert proc.returncode == 1 and proc.stderr.startswith("picklejail: invalid_request: ")
    proc = run_cli(tmp_path / "s.sock")
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_metadata_keys_and_aliases():
    """Aliases are every __metadata__ key but picklejail's own, even one named picklejail.*."""
    meta = {"format": "pt", "picklejail.source_format": "zip", "picklejail.pickle_protocol": "b",
            "picklejail.later_version": "xyz", "picklejail.tied": "b", "tied": "a.weight",
            "picklejail.complex128": "[]"}
    image = safetensors(GOOD_TENSORS, meta)
    result = run_node("""
        const r = pj.parseImage(Buffer.from(process.argv[1], 'hex'));
        console.log(JSON.stringify({ aliases: Object.fromEntries(r.aliases),
                                     same: r.get('picklejail.tied') === r.tensors.get('b'),
                                     names: [...r.tensors.keys()] }));
    """, image.hex())
    assert result == {"aliases": {"picklejail.tied": "b", "tied": "a.weight"}, "same": True,
                      "names": ["a.weight", "b", "flag", "empty"]}
