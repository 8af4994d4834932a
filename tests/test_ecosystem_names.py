"""The names people know: the web UIs' sampler and grid names, A1111's infotext, `sample --from-png`, and the
provenance every checkpoint carries, shown by `undiffuse info`."""

import json
import re

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from safetensors import safe_open
from typer.testing import CliRunner

from undiffuse import __version__, samplers
from undiffuse.cli import app, main
from undiffuse.config import config_from_json, recipe_hash, to_dict
from undiffuse.errors import UndiffuseError
from undiffuse.images import infotext, read_params
from undiffuse.models import load_model
from undiffuse.sampling import card_defaults

pytest.importorskip("sklearn")  # the digits of the digits_run fixture


# --------------------------------------------------------------------------- A1111's parser, for reading our text
# The essentials of AUTOMATIC1111's modules/infotext_utils.py parse_generation_parameters: the last line holds the
# "Key: value" pairs (at least three of them), the lines above it the prompt, then "Negative prompt: …".
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> dict[str, str]:
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    result = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in RE_PARAM.findall(last):
        result[key] = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
    return result


# --------------------------------------------------------------------------- aliases
@pytest.mark.parametrize("name, expected", [
    ("Euler", ("euler", None)), ("Euler a", ("euler_ancestral", None)), ("euler  A", ("euler_ancestral", None)),
    ("Heun", ("heun", None)), ("DPM2", ("dpm_2", None)), ("LMS Karras", ("lms", "karras")),
    ("DPM++ 2M", ("dpmpp_2m", None)), ("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
    ("dpm++ 2m exponential", ("dpmpp_2m", "exponential")), ("DPM++ 2M SDE", ("dpmpp_2m_sde", None)),
    ("DPM++ 2M SDE Karras", ("dpmpp_2m_sde", "karras")), ("DPM++ 3M SDE Exponential", ("dpmpp_3m_sde", "exponential")),
    ("DDIM", ("ddim", None)), ("DDPM", ("ddpm", None)), ("UniPC", ("unipc", None)), ("uni_pc", ("unipc", None)),
    ("DPM adaptive", ("adaptive", None)), ("dpm_adaptive", ("adaptive", None)), ("LCM", ("consistency", None)),
    ("k_euler_a", ("euler_ancestral", None)), ("k_dpmpp_2m_ka", ("dpmpp_2m", "karras")),
    ("dpmpp_2m", ("dpmpp_2m", None)),
])
def test_web_ui_names_resolve(name, expected):
    assert samplers.resolve(name) == expected


def test_every_sampler_has_a_web_ui_name_that_get_accepts():
    for name in samplers.names():
        webui = samplers.WEBUI_NAMES[name]
        assert samplers.get(webui) is samplers.get(name) and samplers.info(webui).name == name
        assert samplers.webui_name(name) == webui and webui in samplers.aliases(name)


def test_unknown_names_list_the_known_ones_and_a_grid_name_needs_a_grid():
    with pytest.raises(UndiffuseError) as err:
        samplers.resolve("DPM++ SDE")  # a web-UI sampler not implemented here: unknown, never a neighbour
    message = str(err.value)
    assert message.startswith("unknown sampler 'DPM++ SDE'; known: ddpm, ddim") and "\n" not in message
    assert "Euler a" in message and "DPM++ 2M SDE" in message and "' Karras'" in message
    with pytest.raises(UndiffuseError, match="names a sampler and a σ grid .*'dpmpp_2m'"):
        samplers.get("DPM++ 2M Karras")  # where no grid is chosen, the grid part would be lost: refused
    assert (samplers.resolve_grid("Karras"), samplers.resolve_grid("exponential")) == ("karras", "exponential")
    assert (samplers.resolve_grid("simple"), samplers.resolve_grid("ddim_uniform")) == ("trailing", "leading")
    assert samplers.resolve_grid("trailing") == "trailing"


def test_card_defaults_take_web_ui_names_and_refuse_two_grids(digits_run):
    loaded = load_model(digits_run)
    assert card_defaults(loaded, "DPM++ 2M SDE Karras", None, None, None) == ("dpmpp_2m_sde", 20, "karras", 2.0)
    assert card_defaults(loaded, "Euler a", 5, "Exponential", 1.5) == ("euler_ancestral", 5, "exponential", 1.5)
    assert card_defaults(loaded, "DPM++ 2M Karras", None, "karras", None)[2] == "karras"  # the same grid twice
    with pytest.raises(UndiffuseError, match="picks the karras σ grid, but the grid asked for is 'trailing'"):
        card_defaults(loaded, "DPM++ 2M Karras", None, "trailing", None)


def test_samplers_lists_the_web_ui_names_and_every_alias():
    result = CliRunner().invoke(app, ["samplers"])
    assert result.exit_code == 0
    assert "web UI" in result.output.splitlines()[0]
    assert any(line.startswith("euler_ancestral") and "Euler a" in line for line in result.output.splitlines())
    result = CliRunner().invoke(app, ["samplers", "--aliases"])
    assert result.exit_code == 0
    rows = dict(line.rsplit(None, 1) for line in result.output.splitlines()[1:] if line.split()[-1] in
                samplers.names())
    assert rows["DPM++ 2M"] == "dpmpp_2m" and rows["uni_pc"] == "unipc" and rows["LCM"] == "consistency"


# --------------------------------------------------------------------------- A1111's infotext
def test_infotext_follows_the_a1111_layout():
    params = {"model": "runs/x", "seed": 7, "sampler": "dpmpp_2m", "steps": 20, "grid": "karras", "rho": 7.0,
              "prompt": "a red heart", "negative_prompt": "blurry", "guidance": 3.0, "sigma_min": None,
              "class": "all, in turn", "guidance_interval": [0.3, 5.0]}
    text = infotext(params, (16, 12))
    lines = text.split("\n")
    assert lines[:2] == ["a red heart", "Negative prompt: blurry"]
    assert lines[2].startswith("Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 3.0, Seed: 7, "
                               "Size: 16x12, Model: runs/x, ")
    parsed = a1111_parse(text)
    assert parsed["Prompt"] == "a red heart" and parsed["Negative prompt"] == "blurry"
    assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"], parsed["CFG scale"], parsed["Seed"],
            parsed["Size"]) == ("20", "DPM++ 2M", "Karras", "3.0", "7", "16x12")
    assert parsed["Class"] == "all, in turn" and parsed["Guidance interval"] == "[0.3, 5.0]"  # quoted, read back
    assert "Sigma min" not in parsed  # None is left out, as A1111 leaves it out
    plain = a1111_parse(infotext({"seed": 1, "sampler": "heun", "steps": 4, "grid": "trailing"}))
    assert plain["Prompt"] == "" and plain["Sampler"] == "Heun" and plain["Schedule type"] == "trailing"


# --------------------------------------------------------------------------- --from-png
def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im).copy()


def test_sample_writes_a1111_text_and_from_png_reproduces_bit_for_bit(digits_run, tmp_path):
    out = tmp_path / "a"
    result = CliRunner().invoke(app, ["sample", str(digits_run), "--sampler", "DPM++ 2M SDE Karras", "--n", "6",
                                      "--steps", "4", "--seed", "5", "--guidance", "3", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "with dpmpp_2m_sde, 4 steps" in result.output
    singles = sorted(out.glob("0*.png"))
    with Image.open(singles[3]) as im:
        text, size = im.text["parameters"], im.size
    parsed = a1111_parse(text)
    assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"], parsed["CFG scale"], parsed["Seed"],
            parsed["Size"]) == ("4", "DPM++ 2M SDE", "Karras", "3.0", "8", f"{size[0]}x{size[1]}")
    params = read_params(singles[3])
    assert (params["sampler"], params["grid"], params["seed"], params["class"]) == ("dpmpp_2m_sde", "karras", 8, "3")

    again = tmp_path / "b"  # one image: its own seed and class, n = 1 (a stochastic sampler: the noise too)
    result = CliRunner().invoke(app, ["sample", "--from-png", str(singles[3]), "--out", str(again), "--no-progress"])
    assert result.exit_code == 0, result.output
    (copy,) = sorted(again.glob("0*.png"))
    assert np.array_equal(_pixels(copy), _pixels(singles[3])) and read_params(copy) == params

    grid = tmp_path / "c"  # the grid: its whole seed range, every image and the grid itself
    result = CliRunner().invoke(app, ["sample", "--from-png", str(out / "grid.png"), "--out", str(grid),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(_pixels(grid / "grid.png"), _pixels(out / "grid.png"))
    assert [p.name for p in sorted(grid.glob("0*.png"))] == [p.name for p in singles]
    assert all(np.array_equal(_pixels(grid / p.name), _pixels(p)) for p in singles)

    changed = tmp_path / "d"  # options given beside it change those parameters, the rest stay the PNG's
    result = CliRunner().invoke(app, ["sample", "--from-png", str(singles[3]), "--steps", "3", "--sampler", "Euler",
                                      "--out", str(changed), "--no-progress"])
    assert result.exit_code == 0, result.output
    params2 = read_params(next(changed.glob("0*.png")))
    assert (params2["steps"], params2["sampler"], params2["seed"], params2["class"], params2["grid"]) == \
        (3, "euler", 8, "3", "karras")
    other = tmp_path / "e"  # a sampler name that picks a grid picks it over the PNG's
    result = CliRunner().invoke(app, ["sample", "--from-png", str(singles[3]), "--sampler", "Heun Exponential",
                                      "--out", str(other), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (read_params(next(other.glob("0*.png")))["grid"], read_params(next(other.glob("0*.png")))["sampler"]) == \
        ("exponential", "heun")


def test_from_png_refuses_what_it_cannot_repeat(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("L", (4, 4)).save(plain)
    task = tmp_path / "task.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("undiffuse", json.dumps({"model": "fashion-mnist", "sampler": "dpmpp_2m", "steps": 4, "seed": 0,
                                           "task": "inpaint"}))
    Image.new("L", (4, 4)).save(task, pnginfo=info)
    future = tmp_path / "future.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("undiffuse", json.dumps({"model": "fashion-mnist", "seed": 0, "warp_drive": 9}))
    Image.new("L", (4, 4)).save(future, pnginfo=info)
    for path, message in ((tmp_path / "missing.png", "no such file"), (plain, "carries no parameters"),
                          (task, "made by `undiffuse inpaint`"), (future, "does not know (warp_drive)")):
        with pytest.raises(SystemExit) as exit_info:
            main(["sample", "--from-png", str(path), "--no-progress"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: --from-png: ") and message in err, err
        assert err.count("\n") == 1


# --------------------------------------------------------------------------- provenance and `undiffuse info`
def test_every_checkpoint_carries_its_provenance_in_the_header(digits_run):
    files = [digits_run / "model.safetensors", *sorted((digits_run / "checkpoints").glob("*.safetensors"))]
    assert len(files) >= 3
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata()
        meta = json.loads(header["undiffuse"])
        cfg = config_from_json(json.dumps(meta["config"]))
        assert header["undiffuse.recipe_hash"] == recipe_hash(cfg) == meta["provenance"]["recipe_hash"]
        assert header["undiffuse.data"] == "digits" and header["undiffuse.data_size"] == "1797"
        assert header["undiffuse.steps"] == str(meta["step"]) == "4"
        assert header["undiffuse.undiffuse_version"] == __version__


def test_recipe_hash_ignores_where_a_run_is_written_only(digits_run):
    cfg = load_model(digits_run).config
    moved = config_from_json(json.dumps({**to_dict(cfg), "out_dir": "/else"}))
    assert recipe_hash(moved) == recipe_hash(cfg)
    cfg.train.lr *= 2
    assert recipe_hash(cfg) != recipe_hash(moved)


def test_info_names_the_cards_guidance_interval_projection_and_eps_scale():
    result = CliRunner().invoke(app, ["info", "fashion-mnist"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("sampling "))
    assert ("dpmpp_2m_sde, 20 steps, trailing grid, guidance 4 for σ in [0.3, 2], the update's part along x̂0 × 0 "
            "(APG), ε̂ / 1.005 for σ ≤ 80") in line


def test_info_prints_the_card_and_provenance(digits_run):
    result = CliRunner().invoke(app, ["info", str(digits_run)])
    assert result.exit_code == 0, result.output
    rows = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in result.output.splitlines()}
    cfg = load_model(digits_run).config
    assert rows["space"] == "pixels 1×8×8" and rows["backbone"].startswith("unet: 32 channels × [1, 2]")
    assert rows["parameterisation"].startswith("eps (ε-prediction) on the cosine chain, T = 1000")
    assert rows["conditioning"].startswith("10 classes: 0, 1, 2") and rows["parameters"].endswith("(EMA weights)")
    assert rows["sampling"].startswith("dpmpp_2m, 20 steps, karras grid, guidance 2") and "DPM++ 2M Karras" in \
        rows["sampling"]
    assert rows["recipe hash"] == recipe_hash(cfg) and rows["data"] == "digits (1,797 items)"
    assert rows["trained"].startswith("4 steps") and rows["versions"].startswith(f"undiffuse {__version__}, torch")
    ckpt = CliRunner().invoke(app, ["info", str(digits_run / "checkpoints" / "latest.safetensors")])
    assert ckpt.exit_code == 0 and "resumable training state at step 4" in ckpt.output
    shipped = CliRunner().invoke(app, ["info", "fashion-mnist"])
    assert shipped.exit_code == 0 and "training command" in shipped.output and "10 classes" in shipped.output
