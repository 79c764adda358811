"""`vlm-hf push` and loading from the Hub, through huggingface_hub's real HTTP client against a local Hub server
(`hub_server.py`): one commit with everything a model needs, private repos and branches, a fresh cache giving
identical outputs, offline loading from the cache, and loading without vlm_hf through `trust_remote_code`."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import tiny_config
from hub_server import TOKEN, HubServer
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import vlm_hf
from vlm_hf.cli import main
from vlm_hf.model_card import write_model_card

QUESTIONS = ["what colour is the circle?", "how many squares are there?"]
CODE_FILES = {"configuration_vlm_hf.py", "modeling_vlm_hf.py", "processing_vlm_hf.py", "image_processing_vlm_hf.py"}
PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}
MODEL_FILES = {"config.json", "model.safetensors", "README.md"} | CODE_FILES | PROCESSOR_FILES

# Runs in a new process, configured by environment variables only (HF_ENDPOINT, HF_HOME, HF_TOKEN, HF_HUB_OFFLINE), as
# a user's would be. Each step loads a repository's processor and model and answers QUESTIONS about the images
# ("load"), pushes the last loaded ones with their own `push_to_hub` ("push"), or records why a load is refused.
CLIENT = textwrap.dedent(
    """
    import json, sys
    job = json.loads(sys.argv[1])
    remote_code = job["without_vlm_hf"]
    if remote_code:
        sys.modules["vlm_hf"] = None  # any `import vlm_hf` fails: only the repository's code files can be used
    else:
        import vlm_hf  # registers the classes with the Auto classes
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor
    torch.set_num_threads(1)
    images = [Image.open(path) for path in job["images"]]
    logits, notes = {}, {}
    for action, name, repo_id, revision in job["steps"]:
        if action == "push":
            notes[name] = [model.push_to_hub(repo_id).oid, processor.push_to_hub(repo_id).oid]
            continue
        options = dict(revision=revision, trust_remote_code=remote_code)
        try:
            processor = AutoProcessor.from_pretrained(repo_id, **options)
            model = AutoModelForVisualQuestionAnswering.from_pretrained(repo_id, **options).eval()
        except OSError as error:
            if action != "refused":
                raise
            notes[name] = str(error)
            continue
        with torch.no_grad():
            logits[name] = model(**processor(images=images, text=job["questions"])).logits
        notes[name] = type(model).__module__
    save_file(logits, job["output"], metadata={"notes": json.dumps(notes)})
    """
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The local Hub, with this process's huggingface_hub pointed at it.

    huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET when it is imported, so this process's client is
    re-pointed through its constants; the new processes get environment variables. Uploads must skip Xet (the server
    offers basic LFS only, and a client with hf_xet installed would upload through Xet)."""
    server = HubServer(tmp_path_factory.mktemp("hub_storage")).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "ENDPOINT", server.url)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server
    server.stop()


def api(server: HubServer, token=TOKEN) -> HfApi:
    return HfApi(endpoint=server.url, token=token)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, processor):
    """A saved VQA model folder (weights, config, code, processor, card), test images and the model's answers."""
    folder = tmp_path_factory.mktemp("saved") / "vqa"
    labels = {i: f"answer {i}" for i in range(5)}
    config = tiny_config(vocab_size=len(processor.tokenizer), id2label=labels, vision_feature_layer="layer1")
    model = vlm_hf.VlmHfForQuestionAnswering(config).eval()  # ResNet stem + layer1 only: small files
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_model_card(folder, model)
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(48, 40), (64, 64)]):
        path = folder.parent / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    with one_thread(), torch.no_grad():  # the client processes run one thread too: identical arithmetic
        expected = model(**processor(images=[Image.open(p) for p in images], text=QUESTIONS)).logits
    return folder, images, expected


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def copy_of(folder, tmp_path, name):
    return shutil.copytree(folder, tmp_path / name)


def run_client(server, tmp_path, home, images, steps, without_vlm_hf=False, offline=False):
    """Run CLIENT in a new process with its own HF_HOME; returns the logits and notes of its steps."""
    output = tmp_path / f"client_{len(list(tmp_path.glob('client_*')))}.safetensors"
    job = dict(images=images, questions=QUESTIONS, steps=steps, output=str(output), without_vlm_hf=without_vlm_hf)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", OMP_NUM_THREADS="1")
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(job)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with safe_open(output, framework="pt") as f:
        notes = json.loads(f.metadata()["notes"])
    return load_file(output), notes


def push(*args) -> int:
    return main(["push", *map(str, args), "--token", TOKEN])


def test_push_then_load_from_the_hub_fresh_offline_and_without_vlm_hf(hub, saved, tmp_path):
    folder, images, expected = saved
    public, private = copy_of(folder, tmp_path, "public"), copy_of(folder, tmp_path, "private")
    assert push(public, "org/vqa", "--commit-message", "First upload") == 0
    assert push(private, "org/private-vqa", "--private", "--revision", "experiment") == 0

    # One commit on top of the repository's initial one, with everything the model needs.
    commits = api(hub).list_repo_commits("org/vqa")
    assert [c.title for c in commits] == ["First upload", "initial commit"]
    assert set(hub.repos["org/vqa"].commits[commits[0].commit_id].changed) == MODEL_FILES
    assert set(api(hub).list_repo_files("org/vqa")) == MODEL_FILES | {".gitattributes"}
    stored = hub.repos["org/vqa"].resolve("main").files
    assert stored["model.safetensors"].lfs and not stored["config.json"].lfs
    config = json.loads(hub.read_blob(stored["config.json"].sha256))
    assert config["auto_map"]["AutoModelForVisualQuestionAnswering"] == "modeling_vlm_hf.VlmHfForQuestionAnswering"
    assert hub.read_blob(stored["model.safetensors"].sha256) == (folder / "model.safetensors").read_bytes()
    # The card, refreshed by the push, loads the repository (and stays so in the pushed folder).
    card = hub.read_blob(stored["README.md"].sha256).decode()
    assert 'AutoModelForVisualQuestionAnswering.from_pretrained("org/vqa", trust_remote_code=True)' in card
    assert (public / "README.md").read_text() == card

    # --private and --revision: the repository is hidden without the token, the files are on the new branch only.
    with pytest.raises(RepositoryNotFoundError):
        api(hub, token=False).model_info("org/private-vqa")
    assert api(hub).model_info("org/private-vqa").private and not api(hub, token=False).model_info("org/vqa").private
    assert {b.name for b in api(hub).list_repo_refs("org/private-vqa").branches} == {"main", "experiment"}
    assert api(hub).list_repo_files("org/private-vqa") == [".gitattributes"]
    assert set(api(hub).list_repo_files("org/private-vqa", revision="experiment")) == MODEL_FILES | {".gitattributes"}

    # A pickle checkpoint on the Hub, uploaded by hand (vlm-hf push refuses it): refused by from_pretrained.
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(folder / "model.safetensors"), pickled / "pytorch_model.bin")
    api(hub).create_repo("org/pickled")
    operations = [CommitOperationAdd(path.name, path) for path in pickled.iterdir()]
    api(hub).create_commit("org/pickled", operations, commit_message="pickle weights")

    # A fresh cache: the same outputs from both repositories, and through the model's and processor's push_to_hub.
    home = tmp_path / "home"
    steps = [
        ("load", "main", "org/vqa", None),
        ("load", "branch", "org/private-vqa", "experiment"),
        ("push", "pushed", "org/vqa-push-to-hub", None),
        ("load", "push_to_hub", "org/vqa-push-to-hub", None),
        ("refused", "pickled", "org/pickled", None),
    ]
    logits, notes = run_client(hub, tmp_path, home, images, steps)
    for name in ("main", "branch", "push_to_hub"):
        torch.testing.assert_close(logits[name], expected, atol=0, rtol=0, msg=name)
    assert "allow_pickle_weights=True" in notes["pickled"] and "pytorch_model.bin" in notes["pickled"]
    pushed_files = set(api(hub).list_repo_files("org/vqa-push-to-hub"))
    assert MODEL_FILES - {"README.md"} <= pushed_files and not any(f.endswith(".bin") for f in pushed_files)

    # Offline: the cached copy loads without a single request.
    requests_before = len(hub.requests)
    logits, _ = run_client(hub, tmp_path, home, images, [("load", "offline", "org/vqa", None)], offline=True)
    torch.testing.assert_close(logits["offline"], expected, atol=0, rtol=0)
    assert len(hub.requests) == requests_before

    # Without vlm_hf, into another fresh cache: the repository's own code files.
    steps = [("load", "remote", "org/vqa", None)]
    logits, notes = run_client(hub, tmp_path, tmp_path / "home_without_vlm_hf", images, steps, without_vlm_hf=True)
    assert notes["remote"].startswith("transformers_modules")
    torch.testing.assert_close(logits["remote"], expected, atol=0, rtol=0)


def test_push_refuses_what_would_not_load_safely_before_any_request(hub, saved, tmp_path, capsys):
    folder, _, _ = saved
    requests_before = len(hub.requests)

    pickled = shutil.copytree(folder, tmp_path / "pickled", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(folder / "model.safetensors"), pickled / "pytorch_model.bin")
    no_code = shutil.copytree(folder, tmp_path / "no_code", ignore=shutil.ignore_patterns("modeling_vlm_hf.py"))
    sharded = shutil.copytree(folder, tmp_path / "sharded")  # an index naming a shard that is not there
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    cases = [
        ((pickled, "org/x"), ["folder", "pickle files ['pytorch_model.bin']"]),
        ((sharded, "org/x"), ["folder", "lacks the weight shards ['model-00002-of-00002.safetensors']"]),
        ((no_code, "org/x"), ["folder", "lacks modeling_vlm_hf.py"]),
        ((tmp_path / "missing", "org/x"), ["argument folder", "no config.json"]),
        ((folder, "not a/valid/id"), ["argument repo_id", "not a Hub repository id"]),
    ]
    for args, expected_messages in cases:
        with pytest.raises(SystemExit) as exit_info:
            push(*args)
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        assert all(part in message for part in expected_messages), message
    assert len(hub.requests) == requests_before  # checked before contacting the Hub

    # A Trainer's leftovers are not part of the model: they stay home, and the folder uploads.
    trained = shutil.copytree(folder, tmp_path / "trained")
    torch.save({"lr": 0.1}, trained / "training_args.bin")
    (trained / "checkpoint-10").mkdir()
    torch.save({}, trained / "checkpoint-10" / "optimizer.pt")
    assert push(trained, "org/trained") == 0
    assert set(api(hub).list_repo_files("org/trained")) == MODEL_FILES | {".gitattributes"}

    # A token the Hub refuses: exit code 1 (not a bad argument), with the Hub's answer.
    assert main(["push", str(trained), "org/other", "--token", "hf_wrong"]) == 1
    assert "the Hub refused the upload" in capsys.readouterr().err and "org/other" not in hub.repos

    # --private never publishes into an existing public repository.
    with pytest.raises(SystemExit) as exit_info:
        push(trained, "org/trained", "--private")
    assert exit_info.value.code == 2 and "already exists and is public" in capsys.readouterr().err
    assert len(api(hub).list_repo_commits("org/trained")) == 2


def test_push_to_a_new_branch_keeps_main_and_reuses_uploaded_weights(hub, saved, tmp_path):
    folder, _, _ = saved
    folder = copy_of(folder, tmp_path, "model")
    (folder / "README.md").unlink()  # a folder without a card gets one, loading the repository
    assert push(folder, "org/branches") == 0
    assert 'AutoModelForVisualQuestionAnswering.from_pretrained("org/branches")' in (folder / "README.md").read_text()
    lfs_uploads_before = sum(method == "PUT" for method, _ in hub.requests)
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), "note": 1}))
    assert push(folder, "org/branches", "--revision", "feature/x", "--commit-message", "Try a change") == 0
    # The weights were already stored: the LFS batch answer needs no new upload.
    assert sum(method == "PUT" for method, _ in hub.requests) == lfs_uploads_before
    repo = hub.repos["org/branches"]
    assert repo.resolve("feature/x").title == "Try a change" and repo.resolve("main").title.startswith("Upload ")
    assert repo.resolve("feature/x").parent == repo.branches["main"]
    main_config = json.loads(hub.read_blob(repo.resolve("main").files["config.json"].sha256))
    branch_config = json.loads(hub.read_blob(repo.resolve("feature/x").files["config.json"].sha256))
    assert "note" not in main_config and branch_config["note"] == 1
