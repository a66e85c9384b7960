"""A gymnasium env plugged in from one outside file (examples/pendulum_domain.py): collected,
trained with ``--agent`` (the domain comes from the dataset) and evaluated with ``--video``."""

import json
from pathlib import Path

import numpy as np
import pytest

from zsrl.cli import main

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = "examples.pendulum_domain:PendulumDomain"
TINY = ["agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
        "train.batch_size=32", "train.steps=10", "train.log_every=5", "train.progress=false"]


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pendulum")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the plug-in is imported as examples.pendulum_domain
        assert main(["collect", "--domain", PENDULUM, "--collector", "random", "--transitions", "400",
                     "--num-envs", "2", "--out", str(tmp / "data"), "--no-progress"]) == 0
        assert main(["train", "--agent", "fb", "--dataset", str(tmp / "data"), "--out", str(tmp / "run"),
                     "--trust-plugins", *TINY]) == 0
    return tmp / "run"


def test_train_with_agent_takes_the_domain_from_the_dataset(pendulum_run, capsys):
    config = json.loads((pendulum_run / "config.json").read_text())
    assert config["domain"] == PENDULUM and config["agent"]["name"] == "fb"
    assert config["train"]["checkpoint_every"] == 5000  # from fb/generic_cpu (no GPU in tests)
    assert config["agent"]["z_dim"] == 8  # overrides still apply


def test_train_with_agent_errors(pendulum_run, tmp_path, capsys):
    def error(*args):
        assert main(["train", *args, "--out", str(tmp_path / "r")]) == 2
        assert not (tmp_path / "r").exists()
        return " ".join(capsys.readouterr().err.split())

    assert "give --config PRESET or --agent AGENT, not both" in error(
        "--agent", "fb", "--config", "fb/walker_cpu", "--dataset", "d")
    assert "meta.json does not exist" in error("--agent", "fb", "--dataset", str(tmp_path))
    assert "agent 'nope' has no generic preset; agents with one: fb, fbm, fbstack, fre, hilp, mcfb, td3, vcfb" in error(
        "--agent", "nope", "--dataset", str(pendulum_run.parent / "data"))


def test_eval_video_of_a_gymnasium_plugin(pendulum_run, tmp_path, monkeypatch):
    pytest.importorskip("pygame", reason="rendering Pendulum needs pygame: pip install 'gymnasium[classic-control]'")
    pytest.importorskip("imageio_ffmpeg", reason="mp4 encoding needs imageio-ffmpeg")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "eval"
    assert main(["eval", str(pendulum_run), "--tasks", "swingup", "--goals", "upright", "--episodes", "1",
                 "--reward-samples", "100", "--video", "--out", str(out), "--trust-plugins"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert not [n for n in results["notes"] if n.startswith("no video")], results["notes"]
    assert {"video_swingup.mp4", "video_goal_upright.mp4"} <= set(results["files"])
    import imageio.v2 as imageio

    reader = imageio.get_reader(out / "video_swingup.mp4", format="FFMPEG")
    try:
        frames = [np.asarray(frame) for frame in reader]
    finally:
        reader.close()
    assert len(frames) == 1 + 200 // 2  # Pendulum's 200 steps, every 2nd one filmed
    assert frames[0].shape == (240, 240, 3) and frames[0].std() > 1  # Pendulum's square, fitted


def test_a_video_replays_the_scored_episode(pendulum_run, tmp_path, monkeypatch):
    """The video is the evaluated episode: a replay that leaves it is refused, not filmed."""
    pytest.importorskip("pygame", reason="rendering Pendulum needs pygame: pip install 'gymnasium[classic-control]'")
    from examples.pendulum_domain import PendulumDomain
    from zsrl import plots
    from zsrl.checkpoint import load_run_model
    from zsrl.evaluation import rollout

    domain = PendulumDomain()
    model = load_run_model(pendulum_run, domain)
    episode = rollout(model, domain, model.sample_z(1), episodes=2, seed=3, max_steps=6)
    assert plots.policy_video(domain, episode, tmp_path / "v.gif", episode=1, frame_stride=1).is_file()
    episode.observation[4, 1] += 1.0  # not what the env does from that seed
    with pytest.raises(RuntimeError, match="left the evaluated one at step 4"):
        plots.policy_video(domain, episode, tmp_path / "w.gif", episode=1)
    assert not (tmp_path / "w.gif").exists()


def test_a_plugin_named_by_an_artifact_is_imported_only_when_the_user_allows_it(pendulum_run, tmp_path, capsys,
                                                                               monkeypatch):
    """A run, dataset or model that names a module path (which anyone can write into its JSON)
    does not get that module imported: the error says which module and how to allow it
    (--trust-plugins, ZSRL_TRUST_PLUGINS, or naming it yourself)."""
    import shutil

    from zsrl.agents.base import Model
    from zsrl.errors import CheckpointError, RegistryError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text("import pathlib\npathlib.Path('pwned').write_text('x')\nclass D: pass\n")
    run = shutil.copytree(pendulum_run, tmp_path / "run")
    data = shutil.copytree(pendulum_run.parent / "data", tmp_path / "data")
    for path in (run / "config.json", data / "meta.json", run / "model" / "config.json"):
        meta = json.loads(path.read_text())
        meta.update({"domain": "evil:D"} if path.name != "meta.json" else {"domain_spec": "evil:D"})
        if path.parent.name == "model":
            meta = {**meta, "agent": "evil:D"}
        path.write_text(json.dumps(meta))
    info = json.loads((run / "run.json").read_text())  # the config as started, edited the same way
    (run / "run.json").write_text(json.dumps({**info, "config": {**info["config"], "domain": "evil:D"}}))
    for argv in (["eval", str(run), "--out", str(tmp_path / "e"), "--episodes", "1"],
                 ["train", "--resume", str(run)],
                 ["train", "--agent", "fb", "--dataset", str(data), "--out", str(tmp_path / "r")],
                 ["data", "goals", str(data), "--out", str(tmp_path / "g.json")]):
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert "names the domain 'evil:D'" in err and "--trust-plugins" in err and "ZSRL_TRUST_PLUGINS=evil" in err, err
    with pytest.raises(CheckpointError, match="the model .* names the agent 'evil:D'"):
        Model.load(run / "model")
    assert not (tmp_path / "pwned").exists()
    monkeypatch.setenv("ZSRL_TRUST_PLUGINS", "evil")
    with pytest.raises(RegistryError, match="could not be created|not a zsrl Domain"):
        from zsrl.envs import make_domain

        make_domain("evil:D", source="a test artifact")
    assert (tmp_path / "pwned").exists()  # allowed: imported
