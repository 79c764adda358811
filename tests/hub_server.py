"""A small stand-in for the Hugging Face Hub's HTTP API, for tests (standard library only).

It serves, on 127.0.0.1, just the endpoints that huggingface_hub's real client calls to create a model repository,
create branches, upload files in a commit (preupload, the LFS batch API and basic LFS transfers, the ndjson commit)
and download them (`hf_hub_download`, `snapshot_download`, `model_info`, tree listings, commits and refs), with the
response headers and `X-Error-Code`s the client relies on. Repositories live in memory, file contents in a folder.

It offers no Xet storage: downloads fall back to plain HTTP by themselves (no `X-Xet-Hash` header), but a client with
`hf_xet` installed uploads through Xet unconditionally, so uploading processes must set `HF_HUB_DISABLE_XET=1`.
"""

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "hf_test"
USER = "test-user"
# Stored as LFS objects, as the Hub's default `.gitattributes` says (and every file of 10 MB or more).
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.model")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()

REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"  # quoted by the client: "feature%2Fx" for the branch "feature/x"


def git_blob_id(content: bytes) -> str:
    """The git object id of a file with this content (what `huggingface_hub.utils.sha.git_hash` computes)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class RepoFile:
    sha256: str  # names the content in the server's blob folder
    size: int
    lfs: bool
    content_git_id: str = ""  # git id of a regular file's content

    @property
    def git_id(self) -> str:
        """The id git gives the file: of its content, or of its LFS pointer."""
        return git_blob_id(lfs_pointer(self.sha256, self.size)) if self.lfs else self.content_git_id


@dataclass
class Commit:
    id: str
    title: str
    message: str
    parent: str | None
    files: dict[str, RepoFile]  # the whole tree at this commit
    changed: list[str]  # paths added or replaced by this commit
    date: str


@dataclass
class Repo:
    id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit id

    def resolve(self, revision: str) -> Commit | None:
        commit_id = self.branches.get(revision, revision)
        return self.commits.get(commit_id)

    def history(self, revision: str) -> list[Commit]:
        """The commits reachable from `revision`, newest first."""
        commits, commit = [], self.resolve(revision)
        while commit is not None:
            commits.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return commits


class HubError(Exception):
    """An error response: status, `X-Error-Code` and message, as the Hub sends them."""

    def __init__(self, status: int, code: str | None, message: str, repo_commit: str | None = None, **body):
        super().__init__(message)
        self.status, self.code, self.message, self.repo_commit = status, code, message, repo_commit
        self.body = {"error": message, **body}


class HubServer:
    """Start with `HubServer(folder).start()`; `url` is the endpoint to give the client, `repos` what it stored."""

    def __init__(self, folder: str | Path):
        self.blobs = Path(folder)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unhandled: list[tuple[str, str]] = []  # requests no route answers (endpoints this server lacks)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "HubServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- storage ------------------------------------------------------------------------------------------------------

    def read_blob(self, sha256: str) -> bytes:
        return (self.blobs / sha256).read_bytes()

    def store_blob(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        (self.blobs / sha256).write_bytes(content)
        return sha256

    def has_blob(self, sha256: str) -> bool:
        return (self.blobs / sha256).is_file()

    def new_commit(self, repo: Repo, branch: str, title: str, message: str, changes: dict, deleted=()) -> Commit:
        parent = repo.resolve(branch)
        files = dict(parent.files) if parent else {}
        for path in deleted:
            files = {p: f for p, f in files.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
        files.update(changes)
        seed = f"{repo.id}\n{parent.id if parent else ''}\n{title}\n{time.time_ns()}\n{sorted(changes)}"
        commit = Commit(
            id=hashlib.sha1(seed.encode()).hexdigest(),
            title=title,
            message=message,
            parent=parent.id if parent else None,
            files=files,
            changed=sorted(changes),
            date=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        )
        repo.commits[commit.id] = commit
        repo.branches[branch] = commit.id
        return commit

    def regular_file(self, content: bytes) -> RepoFile:
        return RepoFile(self.store_blob(content), len(content), lfs=False, content_git_id=git_blob_id(content))


def is_lfs_path(path: str, size: int) -> bool:
    return size >= LFS_MIN_SIZE or any(fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in LFS_PATTERNS)


def _handler_for(hub: HubServer):
    class Handler(_HubRequestHandler):
        server_state = hub

    return Handler


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_state: HubServer

    # -- plumbing -----------------------------------------------------------------------------------------------------

    def log_message(self, format, *args):  # quiet: the tests read `HubServer.requests` instead
        pass

    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def dispatch(self, method: str) -> None:
        hub = self.server_state
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        hub.requests.append((method, url.path))
        body = self.read_body() if method in ("POST", "PUT") else b""
        try:
            for route_method, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, url.path)
                if match and route_method == ("GET" if method == "HEAD" else method):
                    params = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    with hub.lock:
                        handler(self, body, **params)
                    return
            hub.unhandled.append((method, url.path))
            raise HubError(404, None, f"no route for {method} {url.path}")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.repo_commit:
                headers["X-Repo-Commit"] = error.repo_commit
            self.send_json(error.body, status=error.status, headers=headers)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, content: bytes, status: int = 200, headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    def send_json(self, value, status: int = 200, headers: dict | None = None):
        self.send(json.dumps(value).encode(), status, headers)

    # -- access -------------------------------------------------------------------------------------------------------

    def authenticated(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def require_token(self) -> None:
        if not self.authenticated():
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def repo(self, repo_id: str, write: bool = False) -> Repo:
        if write:
            self.require_token()
        repo = self.server_state.repos.get(repo_id)
        # The Hub answers "not found" for a private repository the caller may not see.
        if repo is None or (repo.private and not self.authenticated()):
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- repositories -------------------------------------------------------------------------------------------------

    def create_repo(self, body: bytes):
        self.require_token()
        payload = json.loads(body)
        if payload.get("type") not in (None, "model"):
            raise HubError(400, None, "this test server stores model repositories only")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        hub = self.server_state
        if repo_id in hub.repos:
            # The Hub names the existing repository, which `create_repo(exist_ok=True)` returns.
            raise HubError(409, None, "You already created this model repo", url=f"{hub.url}/{repo_id}")
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        repo = hub.repos[repo_id] = Repo(repo_id, private=private)
        hub.new_commit(repo, "main", "initial commit", "", {".gitattributes": hub.regular_file(GITATTRIBUTES)})
        self.send_json({"url": f"{hub.url}/{repo_id}", "name": repo_id})

    def model_info(self, body: bytes, repo: str, rev: str | None = None):
        repo_ = self.repo(repo)
        commit = self.commit(repo_, rev or "main")
        info = {"id": repo_.id, "private": repo_.private, "sha": commit.id, "lastModified": commit.date}
        self.send_json({**info, "siblings": [{"rfilename": path} for path in sorted(commit.files)]})

    def refs(self, body: bytes, repo: str):
        repo_ = self.repo(repo)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo_.branches.items()]
        self.send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def create_branch(self, body: bytes, repo: str, rev: str):
        repo_ = self.repo(repo, write=True)
        if rev in repo_.branches:
            raise HubError(409, None, f"Reference refs/heads/{rev} already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repo_.branches[rev] = self.commit(repo_, start).id
        self.send_json({})

    def commits(self, body: bytes, repo: str, rev: str):
        repo_ = self.repo(repo)
        self.commit(repo_, rev)
        history = [
            {"id": c.id, "title": c.title, "message": c.message, "authors": [{"user": USER}], "date": c.date}
            for c in repo_.history(rev)
        ]
        self.send_json(history)

    def tree(self, body: bytes, repo: str, rev: str, path: str | None = None):
        commit = self.commit(self.repo(repo), rev)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        files, folders = [], set()
        for file_path, file in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            # The folders between the listed one and the file: all of them when recursive, else the first.
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entry = {"type": "file", "path": file_path, "size": file.size, "oid": file.git_id}
                if file.lfs:
                    pointer_size = len(lfs_pointer(file.sha256, file.size))
                    entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": pointer_size}
                files.append(entry)
        if prefix and not files and not folders:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", repo_commit=commit.id)
        directories = [{"type": "directory", "path": f, "oid": git_blob_id(f.encode())} for f in sorted(folders)]
        self.send_json(directories + files)

    def validate_yaml(self, body: bytes):
        self.send_json({"errors": [], "warnings": []})

    # -- uploads ------------------------------------------------------------------------------------------------------

    def preupload(self, body: bytes, repo: str, rev: str):
        commit = self.commit(self.repo(repo, write=True), rev)
        files = []
        for file in json.loads(body)["files"]:
            lfs = is_lfs_path(file["path"], file["size"])
            existing = commit.files.get(file["path"])
            remote_oid = None if existing is None else existing.sha256 if existing.lfs else existing.content_git_id
            mode = "lfs" if lfs else "regular"
            files.append({"path": file["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        self.send_json({"files": files})

    def lfs_batch(self, body: bytes, repo: str):
        self.repo(repo, write=True)
        request = json.loads(body)
        if request.get("operation") != "upload" or "basic" not in request.get("transfers", ["basic"]):
            raise HubError(400, None, "this test server only accepts basic LFS uploads")
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.server_state.has_blob(obj["oid"]):  # an object already stored needs no upload
                entry["actions"] = {"upload": {"href": f"{self.server_state.url}/lfs-objects/{obj['oid']}"}}
            objects.append(entry)
        self.send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, body: bytes, oid: str):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, "uploaded content does not match its sha256")
        self.server_state.store_blob(body)
        self.send(b"")

    def create_commit(self, body: bytes, repo: str, rev: str):
        repo_ = self.repo(repo, write=True)
        if rev not in repo_.branches:  # commits go to branches (no pull requests here)
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        hub, header, changes, deleted = self.server_state, {}, {}, []
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                header = value
            elif item["key"] == "file":
                changes[value["path"]] = hub.regular_file(base64.b64decode(value["content"]))
            elif item["key"] == "lfsFile":
                if not hub.has_blob(value["oid"]):
                    raise HubError(422, None, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                changes[value["path"]] = RepoFile(value["oid"], value["size"], lfs=True)
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise HubError(400, None, f"unknown commit operation {item['key']!r}")
        parent = header.get("parentCommit")
        if parent and repo_.branches[rev] != parent:
            raise HubError(412, None, "A commit has happened since the parent commit")
        commit = hub.new_commit(repo_, rev, header.get("summary", ""), header.get("description", ""), changes, deleted)
        commit_url = f"{hub.url}/{repo_.id}/commit/{commit.id}"
        self.send_json({"commitUrl": commit_url, "commitOid": commit.id, "pullRequestUrl": None, "success": True})

    # -- downloads ----------------------------------------------------------------------------------------------------

    def resolve(self, body: bytes, repo: str, rev: str, path: str):
        commit = self.commit(self.repo(repo), rev)
        file = commit.files.get(path)
        if file is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", repo_commit=commit.id)
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{file.git_id}"', "Accept-Ranges": "bytes"}
        if file.lfs:  # the Hub's headers for LFS files: their sha256 and size
            headers.update({"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size)})
        content = self.server_state.read_blob(file.sha256)
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(match.group(1))  # a resumed download
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self.send(content[start:], 206 if start else 200, headers, "application/octet-stream")


ROUTES = [
    ("POST", r"/api/repos/create", _HubRequestHandler.create_repo),
    ("POST", r"/api/validate-yaml", _HubRequestHandler.validate_yaml),
    ("GET", rf"/api/models/{REPO}", _HubRequestHandler.model_info),
    ("GET", rf"/api/models/{REPO}/revision/{REV}", _HubRequestHandler.model_info),
    ("GET", rf"/api/models/{REPO}/refs", _HubRequestHandler.refs),
    ("GET", rf"/api/models/{REPO}/commits/{REV}", _HubRequestHandler.commits),
    ("GET", rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.+))?", _HubRequestHandler.tree),
    ("POST", rf"/api/models/{REPO}/branch/{REV}", _HubRequestHandler.create_branch),
    ("POST", rf"/api/models/{REPO}/preupload/{REV}", _HubRequestHandler.preupload),
    ("POST", rf"/api/models/{REPO}/commit/{REV}", _HubRequestHandler.create_commit),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", _HubRequestHandler.lfs_batch),
    ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", _HubRequestHandler.lfs_upload),
    ("GET", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", _HubRequestHandler.resolve),
]
