"""Fixtures that run the pack inside real ComfyUI installs.

ComfyUI installs: $COMFYUI_DIR (several separated by os.pathsep), else
~/ComfyUI plus every ~/ComfyUI-v* sibling.  Every test in this directory is
parametrized over them through the session fixture ``comfy`` (ids
``comfy-<version>``, e.g. ``comfy-0.3.64``).  With none found every test here
skips with one reason: "no ComfyUI found: set COMFYUI_DIR ...".

Each found install runs with its own Python: $COMFYUI_PYTHON, else a venv in
its tree (.venv / venv), a portable install's python_embeded, else the Python
running pytest; the first whose packages cover ComfyUI's requirements wins
(probed once per session in a subprocess, well under a second).  An install
no Python can start is left out, and the session ends with one line naming
what is missing and the pip command that installs it; when no install is
usable every test here skips with that line as its reason.  A test that runs
ComfyUI code in a child process starts it with ``comfy_install.python`` (or
``comfy_harness.python_for(dir)``), never ``sys.executable``.

Fixtures (all session-scoped; one server per ComfyUI version, started lazily,
torn down when pytest moves on to the next version):

    comfy_install      -> comfy_harness.ComfyInstall (path, version, version_tuple)
    comfy              -> comfy_harness.ComfyServer (started; .client, .read_log(),
                          .log_mark(), .pack_import_errors(), .add_model(), .base_dir)
    comfy_client       -> comfy_harness.ComfyClient (object_info(), queue(), submit(), ...)
    tiny_model_cache   -> tiny_models.TinyModelCache (files shared by all versions)
    tiny_flux          -> InstalledModel for the smallest Flux that version loads
    tiny_ltxv          -> InstalledModel, LTX-Video (tiny on every version)
    tiny_sd15_unet     -> InstalledModel, SD1.5 UNet (diffusion_models)
    tiny_clip_l        -> InstalledModel, random CLIP-L (text_encoders, CLIPLoader)
    tiny_sd15_checkpoint -> InstalledModel, UNet + CLIP-L in one checkpoint (no VAE)

Environment knobs: COMFYUI_DIR; PATCHBAY_TINY_CACHE=<dir> keeps generated
models across sessions; PATCHBAY_KEEP_COMFY_BASE=1 keeps the temp base dirs
(logs); PATCHBAY_COMFY_ARGS="--flag ..." adds server flags.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import comfy_harness as ch  # noqa: E402
import tiny_models as tm  # noqa: E402

INSTALLS, UNUSABLE = ch.find_installs()
SKIP_REASON = ch.unusable_line(UNUSABLE) if UNUSABLE else ch.NO_COMFY_REASON


def pytest_collection_modifyitems(config, items):
    if INSTALLS:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(_HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session",
                params=INSTALLS or [None],
                ids=[i.id for i in INSTALLS] or ["no-comfyui"])
def comfy_install(request):
    if request.param is None:
        pytest.skip(SKIP_REASON)
    return request.param


def pytest_terminal_summary(terminalreporter):
    # Shown even with -q: a found ComfyUI that cannot start is a setup step, not an error.
    if UNUSABLE:
        terminalreporter.write_line(SKIP_REASON)


@pytest.fixture(scope="session")
def comfy(comfy_install):
    srv = ch.ComfyServer(comfy_install)
    try:
        srv.start()
    except Exception:
        srv.stop()
        raise
    yield srv
    srv.cleanup()


@pytest.fixture(scope="session")
def comfy_client(comfy):
    return comfy.client


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory):
    root = os.environ.get("PATCHBAY_TINY_CACHE")
    return tm.TinyModelCache(Path(root) if root else tmp_path_factory.mktemp("tiny-models"))


def _install(srv, f: tm.TinyModelFile, family, cond_dim=0, pooled_dim=0, config=None):
    name = srv.add_model(f.folder, f.path)
    return ch.InstalledModel(family=family, name=name, folder=f.folder, path=f.path,
                             cond_dim=cond_dim, pooled_dim=pooled_dim, config=config)


@pytest.fixture(scope="session")
def tiny_flux(comfy, tiny_model_cache):
    cfg = tm.flux_config_for(comfy.install.path)
    f = tiny_model_cache.flux(cfg)
    return _install(comfy, f, "flux", cfg.context_in_dim, cfg.vec_in_dim or 0, cfg)


@pytest.fixture(scope="session")
def tiny_ltxv(comfy, tiny_model_cache):
    f = tiny_model_cache.ltxv()
    return _install(comfy, f, "ltxv", f.config.caption_channels, 0, f.config)


@pytest.fixture(scope="session")
def tiny_sd15_unet(comfy, tiny_model_cache):
    f = tiny_model_cache.sd15_unet()
    return _install(comfy, f, "sd15", 768, 0, f.config)


@pytest.fixture(scope="session")
def tiny_clip_l(comfy, tiny_model_cache):
    f = tiny_model_cache.clip_l()
    return _install(comfy, f, "clip_l", 768, 768)


@pytest.fixture(scope="session")
def tiny_sd15_checkpoint(comfy, tiny_model_cache):
    f = tiny_model_cache.sd15_checkpoint()
    return _install(comfy, f, "sd15_checkpoint", 768, 0, f.config)
