from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import ClassVar, Literal, Optional

import pytest

from fastbind.errors import BadSetting, UserError
from fastbind.training.config import alias, apply_overrides, format_help, from_dict, parse_cli, resolve_key, to_dict


@dataclasses.dataclass
class ModelCfg:
    hidden: int = 256
    dropout: float = 0.3
    tied: bool = True


@dataclasses.dataclass
class OptCfg:
    lr: float = 2e-3
    name: Literal["adam", "rmsprop"] = "adam"


@dataclasses.dataclass
class RunCfg:
    model: ModelCfg = dataclasses.field(default_factory=ModelCfg)
    optim: OptCfg = dataclasses.field(default_factory=OptCfg)
    head: Literal["softmax", "hebbian"] = "softmax"
    tied: bool = False
    seed: int = 0
    buckets: tuple[int, ...] = (100, 1000)
    names: tuple[str, ...] = ("a",)
    pair: tuple[float, float] = (0.9, 0.999)
    ckpt: Optional[str] = None  # noqa: UP045 - the typing spelling must work too
    limit: int | None = 5
    data_dir: str = "data"
    T: int | Literal["auto"] = 100

    def __post_init__(self) -> None:
        if not self.names:
            raise BadSetting("names", "needs at least one value")


@dataclasses.dataclass
class Validated:
    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")


# ----------------------------------------------------------------------------- overrides


def test_override_each_type() -> None:
    base = RunCfg()
    cfg = apply_overrides(
        base,
        [
            "model.hidden=512",
            "optim.lr=1e-3",
            "head=hebbian",
            "tied=false",
            "model.tied=no",
            "buckets=[100,1000,10000]",
            "seed=3",
            "names=x, y",
            "pair=[0.5, 1]",
            "ckpt=runs/a.pt",
            "limit=none",
            "data_dir=data/alt",
            "model.dropout=0",
            "T=auto",
        ],
    )
    assert cfg.model.hidden == 512 and isinstance(cfg.model.hidden, int)
    assert cfg.optim.lr == 1e-3
    assert cfg.head == "hebbian"
    assert cfg.tied is False and cfg.model.tied is False
    assert cfg.buckets == (100, 1000, 10000)
    assert cfg.seed == 3
    assert cfg.names == ("x", "y")
    assert cfg.pair == (0.5, 1.0) and isinstance(cfg.pair[1], float)
    assert cfg.ckpt == "runs/a.pt"
    assert cfg.limit is None
    assert cfg.data_dir == "data/alt"
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.T == "auto" and apply_overrides(cfg, ["T=7"]).T == 7
    # the input is left untouched
    assert base == RunCfg()


@pytest.mark.parametrize(
    "text,expected", [("true", True), ("1", True), ("YES", True), ("on", True), ("0", False), ("No", False)]
)
def test_override_bool_spellings(text: str, expected: bool) -> None:
    assert apply_overrides(RunCfg(), [f"tied={text}"]).tied is expected


def test_override_optional_and_lists() -> None:
    cfg = apply_overrides(RunCfg(), ["ckpt=null", "limit=7", "buckets=[]", 'names=["p","q"]', "buckets=5"])
    assert cfg.ckpt is None and cfg.limit == 7
    assert cfg.buckets == (5,)  # later override wins
    assert cfg.names == ("p", "q")
    assert apply_overrides(RunCfg(), ["buckets=[]"]).buckets == ()
    assert apply_overrides(RunCfg(), ["seed=1e3"]).seed == 1000


@pytest.mark.parametrize(
    "item,message",
    [
        ("model.hiden=512", "unknown key 'model.hiden' (did you mean 'model.hidden'?)"),
        ("sed=1", "did you mean 'seed'?"),
        ("zzzzzz=1", "unknown key 'zzzzzz' (valid keys:"),
        ("tied=maybe", "expected a boolean"),
        ("head=attention", "not one of softmax, hebbian"),
        ("optim.name=adamw", "not one of adam, rmsprop"),
        ("seed=1.5", "expected an integer"),
        ("seed=abc", "expected an integer"),
        ("optim.lr=fast", "expected a number"),
        ("buckets=[1,x]", "expected an integer"),
        ("buckets=1,,2", "empty item"),
        ("pair=[1,2,3]", "expected 2 items"),
        ("limit=lots", "expected an integer"),
        ("model=5", "'model' is a section"),
        ("seed", "malformed override 'seed' (expected key=value)"),
        ("=3", "malformed override"),
        ("a..b=3", "unknown key 'a..b'"),
        ("seed.x=3", "unknown key 'seed.x'"),
        ("T=lots", "bad value for 'T': expected"),
        ("names=[]", "bad value names=[]: needs at least one value"),
    ],
)
def test_override_errors(item: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        apply_overrides(RunCfg(), [item])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_post_init_validation_becomes_user_error() -> None:
    with pytest.raises(UserError, match="invalid Validated settings: n must be >= 1"):
        apply_overrides(Validated(), ["n=0"])


@dataclasses.dataclass
class Range:
    lo: int = 0
    hi: int = 1

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise BadSetting("lo", "must be <= hi")


@dataclasses.dataclass
class Outer:
    range: Range = alias("lo", default_factory=Range)
    RENAMED: ClassVar[dict[str, str]] = {"low": "range.lo", "span": "range"}


def test_bad_setting_names_the_key_as_typed_or_the_dotted_path() -> None:
    for typed in ("lo", "range.lo", "low", "span.lo"):  # short key, field path, renamed keys
        with pytest.raises(UserError) as info:
            apply_overrides(Outer(), [f"{typed}=5"])
        assert str(info.value) == f"bad value {typed}=5: must be <= hi"
    with pytest.raises(UserError) as info:  # from a file: the dotted path and the value
        from_dict(Outer, {"range": {"lo": 7}})
    assert str(info.value) == "bad value range.lo=7: must be <= hi"
    with pytest.raises(UserError) as info:  # another key made the named one wrong: name it by its path
        apply_overrides(Outer(), ["lo=1", "range.hi=0"])
    assert str(info.value) == "bad value lo=1: must be <= hi"


def test_overrides_are_validated_once_at_the_end() -> None:
    assert apply_overrides(Outer(), ["lo=5", "range.hi=9"]).range == Range(5, 9)  # lo > hi in between


def test_renamed_keys_reach_the_new_place_on_command_lines_and_in_saved_configs() -> None:
    assert apply_overrides(Outer(), ["range.hi=9", "low=3"]).range == Range(3, 9)
    assert from_dict(Outer, {"low": 2, "range": {"hi": 4}}).range == Range(2, 4)  # an old config.json
    assert from_dict(Outer, {"span": {"lo": 1}}).range == Range(1, 1)


# ----------------------------------------------------------------------------- dicts


def test_round_trip_to_dict_from_dict() -> None:
    cfg = apply_overrides(RunCfg(), ["model.hidden=64", "buckets=[1,2]", "names=[u,v]", "T=auto", "limit=none"])
    d = to_dict(cfg)
    json.dumps(d)  # JSON-able
    assert d["model"] == {"hidden": 64, "dropout": 0.3, "tied": True}
    assert d["buckets"] == [1, 2] and d["data_dir"] == "data" and d["T"] == "auto" and d["limit"] is None
    back = from_dict(RunCfg, json.loads(json.dumps(d)))
    assert back == cfg
    assert isinstance(back.buckets, tuple) and isinstance(back.pair, tuple)


def test_from_dict_partial_uses_defaults() -> None:
    cfg = from_dict(RunCfg, {"model": {"hidden": 32}, "optim": {"lr": 1}})
    assert cfg.model == ModelCfg(hidden=32) and cfg.optim.lr == 1.0 and cfg.seed == 0


@pytest.mark.parametrize(
    "data,message",
    [
        ({"model": {"hiden": 1}}, "unknown key 'model.hiden' (did you mean 'model.hidden'?)"),
        ({"seed": "3"}, "expected an integer"),
        ({"seed": True}, "expected an integer"),
        ({"tied": 1}, "expected a boolean"),
        ({"head": "x"}, "not one of softmax, hebbian"),
        ({"model": 3}, "section 'model' must be a table"),
        ({"buckets": [1, "a"]}, "buckets[1]"),
        ({"limit": "x"}, "expected an integer"),
        ({"names": []}, "bad value names=[]: needs at least one value"),
    ],
)
def test_from_dict_errors(data: dict, message: str) -> None:
    with pytest.raises(UserError) as info:
        from_dict(RunCfg, data)
    assert message in str(info.value)


# ----------------------------------------------------------------------------- files


def test_config_files(tmp_path: pathlib.Path) -> None:
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"_comment": "ignored", "seed": 4, "model": {"hidden": 8}, "buckets": [7]}))
    cfg, _ = parse_cli(["--config", str(j)], RunCfg)
    assert cfg.seed == 4 and cfg.model.hidden == 8 and cfg.buckets == (7,)


def test_config_file_errors(tmp_path: pathlib.Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("seed = 5\n")
    bad, arr, unknown = tmp_path / "bad.json", tmp_path / "arr.json", tmp_path / "u.json"
    bad.write_text("{seed: 1")
    arr.write_text("[1, 2]")
    unknown.write_text('{"optim": {"lrr": 1}}')
    cases = [(tmp_path / "missing.json", "no such .json file or preset"), (tmp_path / "c.yaml", "no such .json file"),
             (toml, "write it as JSON (the same keys), TOML is not read"), (bad, "cannot parse"),
             (arr, "object at top level"), (unknown, "did you mean 'optim.lr'"), ("nopreset", "presets: ")]
    for path, message in cases:
        with pytest.raises(UserError) as info:
            parse_cli(["--config", str(path)], RunCfg)
        assert message in str(info.value) and "\n" not in str(info.value), path


# ----------------------------------------------------------------------------- CLI


def test_parse_cli_layers(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"seed": 4, "model": {"hidden": 8}}))
    cfg, rest = parse_cli(["runs/x", "--config", str(f), "seed=5", "k"], RunCfg)
    assert cfg.seed == 5  # override beats file
    assert cfg.model.hidden == 8  # file beats default
    assert cfg.model.dropout == 0.3  # default kept
    assert rest == ["runs/x", "k"]
    cfg2, rest2 = parse_cli([f"--config={f}"], RunCfg)
    assert cfg2.seed == 4 and rest2 == []


def test_parse_cli_base() -> None:
    base = RunCfg(seed=7, head="hebbian")
    cfg, rest = parse_cli(["RUN", "model.hidden=3"], RunCfg, base=base)
    assert cfg.seed == 7 and cfg.head == "hebbian" and cfg.model.hidden == 3 and rest == ["RUN"]


def test_parse_cli_base_with_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"hidden": 8}}))
    cfg, _ = parse_cli(["--config", str(f)], RunCfg, base=RunCfg(seed=7, model=ModelCfg(dropout=0.1)))
    assert cfg.seed == 7 and cfg.model.hidden == 8 and cfg.model.dropout == 0.1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr=3"], "unknown option '--lr=3'"),
        (["--"], "unknown option '--'"),
        (["--config"], "--config needs a file path"),
        (["--config", "a.json", "--config", "b.json"], "more than once"),
        (["model.hiden=1"], "did you mean 'model.hidden'"),
    ],
)
def test_parse_cli_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UserError) as info:
        parse_cli(argv, RunCfg)
    assert message in str(info.value)


def test_format_help_lists_keys() -> None:
    text = format_help(RunCfg)
    assert "model.hidden: int = 256" in text
    assert "head: Literal['softmax', 'hebbian'] = \"softmax\"" in text
    assert "buckets: tuple[int, ...] = [100, 1000]" in text and "ckpt: Optional[str] = null" in text


# ----------------------------------------------------------------------------- aliases


@dataclasses.dataclass
class MemCfg:
    lam: float = alias("lambda", default=0.0)
    size: int = 100


@dataclasses.dataclass
class AliasCfg:
    model: ModelCfg = alias("hidden", "tied", default_factory=ModelCfg)
    optim: OptCfg = alias("lr", default_factory=OptCfg)
    cache: MemCfg = dataclasses.field(default_factory=MemCfg)
    seed: int = alias("s", default=0)


def test_alias_sets_the_field_and_saves_under_the_field_name() -> None:
    cfg = apply_overrides(AliasCfg(), ["cache.lambda=0.25", "hidden=64", "lr=1e-3", "tied=false", "s=3"])
    assert (cfg.cache.lam, cfg.model.hidden, cfg.optim.lr, cfg.model.tied, cfg.seed) == (0.25, 64, 1e-3, False, 3)
    data = to_dict(cfg)
    assert data["cache"] == {"lam": 0.25, "size": 100} and "lambda" not in json.dumps(data)
    assert from_dict(AliasCfg, json.loads(json.dumps(data))) == cfg  # saved configs load back
    # The field names keep working, and later overrides win whichever spelling they use.
    cfg = apply_overrides(AliasCfg(), ["cache.lam=0.1", "model.hidden=8", "hidden=9", "cache.lambda=0.2"])
    assert (cfg.cache.lam, cfg.model.hidden) == (0.2, 9)
    cfg, rest = parse_cli(["run", "cache.lambda=0.5", "lr=0.1"], AliasCfg)
    assert (cfg.cache.lam, cfg.optim.lr, rest) == (0.5, 0.1, ["run"])


def test_resolve_key() -> None:
    assert resolve_key(AliasCfg, "hidden") == "model.hidden"
    assert resolve_key(AliasCfg, "cache.lambda") == "cache.lam"
    assert resolve_key(AliasCfg, "s") == "seed"
    assert resolve_key(AliasCfg, "model.dropout") == "model.dropout"
    assert resolve_key(AliasCfg, "nope.x") == "nope.x"  # unknown keys come back unchanged


def test_alias_errors_name_the_typed_key() -> None:
    with pytest.raises(UserError, match="bad value for 'cache.lambda'"):
        apply_overrides(AliasCfg(), ["cache.lambda=much"])
    with pytest.raises(UserError, match="bad value for 'hidden'"):
        apply_overrides(AliasCfg(), ["hidden=big"])
    with pytest.raises(UserError, match="did you mean 'cache.lambda'"):
        apply_overrides(AliasCfg(), ["cache.lambdaa=1"])
    with pytest.raises(UserError, match="unknown key 'dropout'"):
        apply_overrides(AliasCfg(), ["dropout=0.1"])  # only declared short keys reach into a section


def test_format_help_shows_the_keys_users_type() -> None:
    lines = format_help(AliasCfg).splitlines()
    assert "cache.lambda: float = 0.0" in lines
    assert "model.hidden (or hidden): int = 256" in lines
    assert "optim.lr (or lr): float = 0.002" in lines
    assert "s: int = 0" in lines
    assert "model.dropout: float = 0.3" in lines
    assert not any(line.startswith(("cache.lam:", "seed:")) for line in lines)


def test_alias_declaration_errors() -> None:
    @dataclasses.dataclass
    class Clash:
        a: int = alias("b", default=0)
        b: int = 0

    @dataclasses.dataclass
    class Missing:
        model: ModelCfg = alias("nope", default_factory=ModelCfg)

    for cls in (Clash, Missing):
        with pytest.raises(TypeError):
            apply_overrides(cls(), ["a=1"] if cls is Clash else ["model.hidden=1"])


def test_a_config_file_takes_the_keys_a_command_line_takes(tmp_path):
    # Short keys and aliases (cache.lambda for the field cache.lam) and the old names of RENAMED, as typed.
    from fastbind.lm import LMEvalConfig, LMTrainConfig

    cfg = from_dict(LMEvalConfig, {"cache": {"lambda": 0.1}, "mbpa": {"lambda": 0.2}})
    assert (cfg.cache.lam, cfg.mbpa.lam) == (0.1, 0.2)
    cfg = from_dict(LMTrainConfig, {"hidden": 32, "lr": 0.01, "model": {"fwm_size": 4}})
    assert (cfg.lstm.hidden, cfg.optim.lr, cfg.fwm.size) == (32, 0.01, 4)
    with pytest.raises(UserError, match=r"^bad value cache\.lambda=1\.5: must be in \[0, 1\)"):
        from_dict(LMEvalConfig, {"cache": {"lambda": 1.5}})


def test_renamed_keys_reach_into_sections():
    # The demo puts lm-train's keys under train; lm-train's own old names still apply there.
    from fastbind.recipes.demo import DemoConfig

    cfg, _ = parse_cli(["model.hidden=64", "model.fwm_size=8", "train.model.layers=2", "lr=0.01", "mbpa_k=8"],
                       DemoConfig)
    assert (cfg.train.lstm.hidden, cfg.train.fwm.size, cfg.train.lstm.layers) == (64, 8, 2)
    assert (cfg.train.optim.lr, cfg.mbpa_k) == (0.01, 8)
    assert from_dict(DemoConfig, {"model": {"hidden": 64}}).train.lstm.hidden == 64
    with pytest.raises(UserError, match=r"^bad value batch_size=0: must be >= 1"):  # named as typed
        parse_cli(["batch_size=0"], DemoConfig)


def test_a_literal_word_is_itself_even_when_it_reads_as_a_boolean_or_number() -> None:
    @dataclasses.dataclass
    class Words:
        mode: Literal["authors", "true"] = "authors"
        level: Literal["1", "2"] = "1"
        flag: bool = False

    cfg, _ = parse_cli(["mode=true", "level=2", "flag=true"], Words)
    assert (cfg.mode, cfg.level, cfg.flag) == ("true", "2", True)
    with pytest.raises(UserError, match="'mode'.*is not one of authors, true"):
        parse_cli(["mode=yes"], Words)
