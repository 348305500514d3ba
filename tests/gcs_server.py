"""A Google Cloud Storage JSON-API server on loopback, for the gs:// tests.

The server is gcp-storage-emulator (PyPI), run in a process of its own, as a user's would be.
One addition: it leaves out the `x-goog-generation` header of a media download, which the real
GCS sends and TensorStore (Orbax's array writer) needs to read an object it will update (its
OCDBT manifest): without it, the second save of a run fails with "Malformed StorageGeneration".
The header is added from the object's own metadata, which the emulator keeps. Nor does it
have the objects.move call (`moveTo`, GA in GCS since 2025) that gcsfs tries first for a
rename: gcsfs then falls back to copy and delete, after retries that took 40 s per damaged
checkpoint moved aside. It is added as that copy and delete, done in the server. Nor does it
honour the `ifGenerationMatch` precondition of an upload or a delete, on which jaxdl's gs://
lease stands (an object created only if absent); it is checked here, under one lock, as GCS
does atomically. And it parses a multipart upload with Python's email parser, which takes
gcsfs's "\n--boundary" after content that ends in b"\r" for a CRLF line end and drops that
byte (a checkpoint file of 853 bytes was stored with 852); the upload is split here on the
line end its own first delimiter uses.

  with gcs_server.running("bucket") as env: ...   # env: what a child process needs
"""

from __future__ import annotations

import contextlib
import json
from http import HTTPStatus
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request


def _env(port: int) -> dict[str, str]:
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,     # gcsfs (under etils.epath): the JSON API's host
      "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore (under Orbax): the same endpoint
      # google-cloud-cpp (under ArrayRecord's reader: tfds.data_source of a gs:// data_dir); it
      # reads this once, when the process's first gs:// ArrayRecord file is opened
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
      # gcsfs >= 2026 asks a gRPC control API for the bucket's layout first; the emulator has
      # none, and each ask waits 60 s before it falls back to the JSON API.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


_SERVERS: dict[str, subprocess.Popen] = {}  # endpoint URL: its server process


@contextlib.contextmanager
def paused(env: dict[str, str]):
  """The server of `env` stopped (SIGSTOP) for the `with` block: the kernel still accepts its
  connections, and nothing answers them, as with an endpoint cut off by the network."""
  proc = _SERVERS[env["STORAGE_EMULATOR_HOST"]]
  proc.send_signal(signal.SIGSTOP)
  try:
    yield
  finally:
    proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def writes_refused(env: dict[str, str]):
  """For the `with` block, the server of `env` answers every request but a read with GCS's 403
  (the service account lost storage.objects.create, say): a real HTTP error, from the server."""
  url = env["STORAGE_EMULATOR_HOST"]
  urllib.request.urlopen(urllib.request.Request(f"{url}/_jaxdl/writes?allowed=0", method="PUT"))
  try:
    yield
  finally:
    urllib.request.urlopen(urllib.request.Request(f"{url}/_jaxdl/writes?allowed=1", method="PUT"))


@contextlib.contextmanager
def running(bucket: str):
  """Starts the server on a free port with an empty in-memory `bucket`, sets this process's
  environment to use it, yields that environment, and stops the server (and restores the
  environment) after."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, __file__, str(port), bucket],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    line = proc.stdout.readline()
    if line.strip() != "ready":
      raise RuntimeError(f"the GCS server did not start: {line}{proc.stdout.read()}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain its log
    env = _env(port)
    _SERVERS[env["STORAGE_EMULATOR_HOST"]] = proc
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      yield env
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  finally:
    proc.kill()
    proc.wait()


def _answer(request, status: HTTPStatus, body: dict) -> None:
  data = json.dumps(body).encode()
  request.send_response(status)
  request.send_header("Content-Type", "application/json; charset=UTF-8")
  request.send_header("Content-Length", str(len(data)))
  request.end_headers()
  request.wfile.write(data)


def _multipart_related(raw: bytes, content_type: str) -> dict:
  """The emulator's {'meta', 'content', 'content-type'} of a multipart/related upload: a JSON
  part, then the content, each delimiter line ended as the first one is (CRLF or LF), and the
  line end before a delimiter part of it (RFC 2046 5.1.1), never of the content."""
  boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip().strip('"').encode()
  start = raw.index(b"--" + boundary) + len(boundary) + 2
  eol = b"\r\n" if raw[start:start + 2] == b"\r\n" else b"\n"
  parts = raw[start + len(eol):].split(eol + b"--" + boundary)
  meta, content = (part.split(eol + eol, 1) for part in (parts[0], parts[1][len(eol):]))
  headers = dict(line.split(b":", 1) for line in content[0].split(eol) if b":" in line)
  return {"meta": json.loads(meta[1]), "content": content[1],
          "content-type": headers.get(b"Content-Type", b"application/octet-stream")
                          .decode().strip()}


def _serve(port: int, bucket: str) -> None:
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # pylint: disable=broad-except  (not found: download set the 404)
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

  def move(request, response, storage, *args, **kwargs):
    request.params["dest_bucket_name"] = request.params["bucket_name"]
    objects.copy(request, response, storage, *args, **kwargs)
    if response.status == HTTPStatus.OK:
      objects._delete(storage, request.params["bucket_name"], request.params["object_id"])  # pylint: disable=protected-access

  lock = threading.Lock()

  def preconditioned(handler, name_of):
    """`handler` with GCS's ifGenerationMatch: the object's generation now (0: absent) must be
    the one named, else 412 Precondition Failed and nothing done."""
    def checked(request, response, storage, *args, **kwargs):
      wanted = request.query.get("ifGenerationMatch")
      if not wanted:
        return handler(request, response, storage, *args, **kwargs)
      with lock:
        try:
          now = str(storage.get_file_obj(request.params["bucket_name"],
                                         name_of(request))["generation"])
        except Exception:  # pylint: disable=broad-except  (absent)
          now = "0"
        if now != wanted[0]:
          response.status = HTTPStatus.PRECONDITION_FAILED
          return None
        return handler(request, response, storage, *args, **kwargs)
    return checked

  def uploaded_name(request):
    if "name" in request.query:
      return request.query["name"][0]
    return request.data["meta"].get("name")

  objects.download = download_with_generation  # the server's routes look it up at import
  objects.insert = preconditioned(objects.insert, uploaded_name)
  objects.delete = preconditioned(objects.delete, lambda r: r.params["object_id"])
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top
  emulator.HANDLERS = ((r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
                        r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {"POST": move}),
                       *emulator.HANDLERS)
  # PUT /_jaxdl/writes?allowed=0|1 (writes_refused): this server's own switch.
  refused = threading.Event()
  handle = emulator.Router.handle
  def handle_unless_refused(router, method):
    request = router._request_handler  # pylint: disable=protected-access
    if request.path.startswith("/_jaxdl/writes"):
      (refused.clear if request.path.endswith("allowed=1") else refused.set)()
      return _answer(request, HTTPStatus.OK, {})
    if refused.is_set() and method != "GET":
      request.rfile.read(int(request.headers.get("Content-Length") or 0))  # the body, unread
      return _answer(request, HTTPStatus.FORBIDDEN, {"error": {
          "code": 403, "message": "jaxdl-tests does not have storage.objects.create access to "
          "the Google Cloud Storage object. Permission 'storage.objects.create' denied on "
          "resource (or it may not exist).", "errors": [{"reason": "forbidden"}]}})
    return handle(router, method)
  emulator.Router.handle = handle_unless_refused
  read_data = emulator._read_data  # pylint: disable=protected-access
  def read_data_exactly(request_handler, query):
    content_type = request_handler.headers.get("Content-Type") or ""
    if not content_type.startswith("multipart/related"):
      return read_data(request_handler, query)
    raw = emulator._decode_raw_data(emulator._read_raw_data(request_handler), request_handler)  # pylint: disable=protected-access
    return _multipart_related(raw, content_type)
  emulator._read_data = read_data_exactly  # pylint: disable=protected-access
  create_server = emulator.create_server
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  print("ready", flush=True)
  threading.Event().wait()


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2])
