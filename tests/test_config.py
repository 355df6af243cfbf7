"""The settings tree (condenser.config): profiles as instances, resolution order, typed checks, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import tomllib

from condenser.build import BuildConfig
from condenser.condense import CondenseConfig
from condenser.config import ConfigError, differences, items_mapping, load_file, parse_item
from condenser.config.tree import Config, EvalBudget, TeacherBudget
from condenser.multisize import MultisizeConfig
from condenser.profiles import PROFILES, get_profile, resolve
from condenser.relabel import RelabelConfig
from condenser.statmatch import MatchConfig, RecoverConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_the_defaults_are_the_paper_profile_and_each_stage_class_keeps_its_own():
    paper = get_profile("paper")
    assert paper == Config(name="paper")
    assert paper.condense == dataclasses.replace(CondenseConfig(), method="gm")  # the loop's own defaults
    assert paper.condense.multisize == MultisizeConfig() and paper.relabel == RelabelConfig()
    assert paper.method.sre2l.recover == RecoverConfig() and paper.method.gvbsm.recover.match != MatchConfig()
    assert (paper.condense.outer_loops, paper.condense.inner_loops, paper.condense.period) == (2000, 100, 100)


def test_profiles_keep_the_budgets_they_had():
    smoke, cpu = get_profile("smoke"), get_profile("cpu")
    assert smoke.teacher.budget() == TeacherBudget(epochs=1, batch_size=64, max_train=512, max_test=256)
    assert smoke.evaluate == EvalBudget(epochs=4, seeds=2, width=16, max_test=256)
    assert smoke.quick_budget == EvalBudget(epochs=2, seeds=2, width=16, max_test=256)
    assert (smoke.method.name, smoke.method.gm.n_data, smoke.relabel.views) == ("dm", 64, 2)
    assert (smoke.condense.outer_loops, smoke.condense.inner_loops, smoke.condense.period) == (4, 2, 2)
    assert cpu.quick_budget == EvalBudget(epochs=100, max_test=2000, precision="auto") and cpu.evaluate.epochs == 300
    bench = cpu.benched()
    assert (bench.condense.outer_loops, bench.condense.inner_loops, bench.condense.period) == (15, 10, 3)
    assert bench.evaluate == EvalBudget(epochs=100, max_test=2000, precision="auto", compile=True)
    assert bench.bench == get_profile("paper").bench
    assert [get_profile(n).method.teddy.recover.iterations for n in ("smoke", "cpu", "paper")] == [20, 500, 1000]


@pytest.mark.parametrize("name", PROFILES.names())
def test_the_recorded_tree_rebuilds_the_tree(name):
    tree = resolve(name, items=["relabel.crop_scale=[0.3, 1]", "quick.evaluate.epochs=7", "bench.pack.codec=dense-f16"])
    record = json.loads(json.dumps(tree.as_dict()))  # as a JSON result or a msgpack header holds it
    assert record["name"] == name and "ipc" not in record["condense"] and "seed" not in record["relabel"]
    rebuilt = get_profile(name).updated({k: v for k, v in record.items() if k != "name"})
    assert rebuilt == tree and rebuilt.relabel.crop_scale == (0.3, 1.0)


def test_resolution_order_is_profile_file_flags_set(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[condense]\nouter_loops = 7\n\n[relabel]\nviews = 3\n\n[pack]\ncodec = 'dense-f16'\n")
    tree = resolve("smoke", files=[path], aliases={"pack.codec": ("--codec", "topk-f16"), "relabel.views": ("--views",
                   None)}, items=["condense.outer_loops=9"])
    assert (tree.condense.outer_loops, tree.relabel.views, tree.pack.codec) == (9, 3, "topk-f16")
    assert tree.condense.inner_loops == get_profile("smoke").condense.inner_loops  # untouched settings stay
    with pytest.raises(ConfigError, match=r"^pack.codec is given twice, by --codec and by --set; give it once$"):
        resolve("smoke", aliases={"pack.codec": ("--codec", "dense-f16")}, items=["pack.codec=topk-f16"])


def test_yaml_and_toml_files_give_the_same_tree(tmp_path):
    (tmp_path / "a.toml").write_text("[method.sre2l.recover.match]\nbn_weight = 0.5\n[quick]\nsizes = [1, 3]\n")
    (tmp_path / "a.yaml").write_text("method:\n  sre2l:\n    recover:\n      match: {bn_weight: 0.5}\nquick:\n"
                                     "  sizes: [1, 3]\n")
    assert load_file(tmp_path / "a.toml") == load_file(tmp_path / "a.yaml")
    tree = resolve("cpu", files=[tmp_path / "a.yaml"])
    assert tree.method.sre2l.recover.match.bn_weight == 0.5 and tree.quick.sizes == (1, 3)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the file must hold a table of sections, not list"):
        resolve("cpu", files=[tmp_path / "list.yaml"])
    (tmp_path / "bad.yml").write_text("a: [1\n")
    with pytest.raises(ConfigError, match="bad.yml: not valid YAML"):
        load_file(tmp_path / "bad.yml")


@pytest.mark.parametrize(("item", "message"), [
    ("evaluat.epochs=3", "unknown section 'evaluat' (--set); valid: bench, condense, evaluate, method, pack, quick, "
                         "relabel, teacher"),
    ("condense.outer_loop=3", "unknown setting 'condense.outer_loop' (--set); valid: batch_real, "
                              "checkpoint_every, depth, factor, init, inner_loops, lr_img, model, mom_img, multisize, "
                              "norm, outer_loops, precision, width"),
    ("condense.multisize.perod=3", "unknown setting 'condense.multisize.perod' (--set); valid: class_wise, enabled, "
                                   "freeze, period, subsets, weight"),
    ("bench.evaluate.epoch=3", "unknown setting 'bench.evaluate.epoch' (--set); valid: batch_size, "),
    ("condense.outer_loops=2.5", "condense.outer_loops = 2.5 (--set): expected int"),
    ("condense.outer_loops=true", "condense.outer_loops = True (--set): expected int"),
    ("condense.outer_loops=ten", "condense.outer_loops = 'ten' (--set): expected int"),
    ("condense.outer_loops=null", "condense.outer_loops = None (--set): expected int"),
    ("evaluate.max_test=many", "evaluate.max_test = 'many' (--set): expected int or null"),
    ("relabel.crop_scale=[0.5]", "relabel.crop_scale = [0.5] (--set): expected a list of 2 (float, float)"),
    ("quick.labels=[\"soft\", 3]", "quick.labels = ['soft', 3] (--set): expected a list of str"),
    ("pack.embed_trainer=1", "pack.embed_trainer = 1 (--set): expected bool"),
    ("condense.multisize=3", "condense.multisize (--set) is a section: give a table of its settings, not 3"),
    ("bench.evaluate=3", "bench.evaluate (--set) is a section: give a table of its settings, not 3"),
    ("method.sre2l.teacher_kwargs=[1]", "method.sre2l.teacher_kwargs = [1] (--set): expected a table"),
    ("condense.seed=3", "condense.seed (--set) is not a setting: --seed gives it"),
    ("method.gvbsm.recover.seed=3", "method.gvbsm.recover.seed (--set) is not a setting: --seed gives it"),
    ("bench.condense.ipc=3", "bench.condense.ipc (--set) is not a setting: --ipc gives it"),
    ("condense.outer_loops=0", "condense (--set): outer_loops must be >= 1, got 0"),
    ("condense.multisize.freeze=always", "condense.multisize (--set): unknown freeze rule 'always'; known: paper, "
                                         "code, none"),
    ("relabel.views=0", "relabel.views must be >= 1, got 0 (hard labels only: --soft-labels none) (--set)"),
    ("bench.relabel.views=0", "bench: relabel.views must be >= 1, got 0"),
    ("evaluate.seeds=0", "evaluate (--set): seeds must be >= 1, got 0"),
    ("pack.codec=zip", "pack (--set): unknown soft-label codec 'zip'; valid: "),
    ("method.name=gmm", "method (--set): unknown method 'gmm'; valid: dm, gm, gvbsm, sre2l, teddy"),
    ("teacher.arch=vgg", "unknown model 'vgg' (teacher.arch); valid: "),
    ("quick.evaluate.loss=mse", "unknown student loss 'mse' (quick.evaluate.loss); valid: kl, mse_gt, soft_ce"),
    ("evaluate.loss_temperature=0", "evaluate (--set): loss_temperature must be > 0, got 0"),
    ("method.teddy.schedule=sometimes", "method.teddy (--set): unknown schedule 'sometimes'; known: per-ipc, joint"),
])
def test_a_bad_key_or_value_is_one_config_error_naming_the_key(item, message):
    with pytest.raises(ConfigError) as caught:
        resolve("smoke", items=[item])
    assert type(caught.value) is ConfigError and str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_values_take_the_field_types():
    tree = resolve("smoke", items=["evaluate.lr=1", "evaluate.max_test=null", "quick.sizes=[1, 3]",
                                   "relabel.crop_ratio=[1, 2]", "method.sre2l.teacher_kwargs={\"norm\": \"batch\"}",
                                   "method.teddy.stages=[1, 2]", "method.gm.class_batched=true", "pack.topk=3",
                                   "condense.lr_img=0.01", "teacher.arch=resnet18"])
    assert tree.evaluate.lr == 1.0 and isinstance(tree.evaluate.lr, float) and tree.evaluate.max_test is None
    assert tree.quick.sizes == (1, 3) and tree.relabel.crop_ratio == (1.0, 2.0)
    assert tree.method.sre2l.teacher_kwargs == {"norm": "batch"} and tree.method.teddy.stages == (1, 2)
    assert tree.method.gm.class_batched is True and tree.pack.topk == 3 and tree.condense.lr_img == 0.01
    assert tree.teacher.arch == "resnet18" and tree.teacher.budget() == get_profile("smoke").teacher.budget()
    assert resolve("smoke", items=["method.dm.matching_strategy=color"]).method.dm.matching_strategy == "color"


def test_set_items_parse_json_else_text_and_nest():
    assert parse_item("a.b=3") == ("a.b", 3) and parse_item("a.b=x=y") == ("a.b", "x=y")
    assert parse_item("a.b=[1, 2]") == ("a.b", [1, 2]) and parse_item("a.b=") == ("a.b", "")
    assert items_mapping(["a.b=1", "a.c.d=null", "a.b=2"]) == {"a": {"b": 2, "c": {"d": None}}}
    for bad in ("iterations", "=3", "a..b=1", ".a=1"):
        with pytest.raises(ConfigError, match=re.escape(f"--set expects section.field=VALUE, got {bad!r}")):
            parse_item(bad)


def test_overlays_change_only_the_settings_they_give():
    tree = resolve("cpu", items=["evaluate.width=64", "bench.evaluate.seeds=2"])
    assert tree.quick_budget.width == 64 and tree.quick_budget.epochs == 100  # quick changes epochs, max_test
    assert tree.bench.evaluate == {"epochs": 100, "max_test": 2000, "compile": True, "seeds": 2}  # merged
    assert tree.benched().evaluate == EvalBudget(epochs=100, max_test=2000, seeds=2, width=64, precision="auto",
                                                 compile=True)
    paper = resolve("paper", aliases={"quick.evaluate.epochs": ("--epochs", 5)})
    assert paper.quick_budget == dataclasses.replace(paper.evaluate, epochs=5)
    assert resolve("cpu", items=["quick.evaluate=null"]).quick_budget == get_profile("cpu").evaluate


def test_the_bench_tree_lets_a_set_item_reach_what_the_bench_runs():
    tree = resolve("cpu", items=["evaluate.epochs=5", "condense.multisize.period=1"], bench=True)
    assert tree.evaluate.epochs == 5 and tree.evaluate.max_test == 2000  # not shadowed by the overlay's 100
    assert (tree.condense.outer_loops, tree.condense.period) == (15, 1)
    later = resolve("cpu", items=["evaluate.epochs=5", "bench.evaluate.epochs=7"], bench=True)
    assert later.evaluate.epochs == 7 and later.bench == get_profile("paper").bench


def test_a_build_hands_each_stage_its_section():
    tree = resolve("smoke", items=["method.name=gm", "method.gm.n_data=48", "condense.width=8"])
    cfg = BuildConfig(ipc=3, settings=tree, seed=5, device="cpu")
    run = cfg.condense_config()
    assert (run.method, run.ipc, run.seed, run.device, run.width) == ("gm", 3, 5, "cpu", 8)
    assert run.method_settings == dataclasses.asdict(tree.method.gm) and run.method_settings["n_data"] == 48
    assert dataclasses.replace(run, method="gm", ipc=10, seed=0, device="auto", method_settings={}) == tree.condense
    decoupled = BuildConfig(settings=resolve("smoke", items=["method.name=sre2l"]))
    with pytest.raises(ConfigError, match="method.name 'sre2l' does not run the condense loop; valid here: dm, gm"):
        decoupled.condense_config()
    assert cfg.record() == {"dataset": "fashion-mnist", "ipc": 3, "soft_labels": "teacher", "teacher_path": None,
                            "seed": 5, "device": "cpu", "data_root": None, "profile": "smoke"}


def test_differences_are_the_set_items_that_rebuild_a_tree():
    tree = resolve("smoke", items=["condense.multisize.class_wise=true", "relabel.crop_scale=[0.4, 1]",
                                   "bench.evaluate.epochs=3"])
    changed = differences(tree, get_profile("smoke"))
    assert changed == {"condense.multisize.class_wise": True, "relabel.crop_scale": [0.4, 1.0],
                       "bench.evaluate": {"epochs": 3}}
    assert resolve("smoke", items=[f"{k}={json.dumps(v)}" for k, v in changed.items()]) == tree


def test_the_example_config_in_the_docs_parses_and_resolves(tmp_path):
    text = DOCS.read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    path = tmp_path / "longer-dm.toml"
    path.write_text(block)
    assert tomllib.loads(block)["condense"]["multisize"]["class_wise"] is True
    tree = resolve("cpu", files=[path], items=["evaluate.seeds=3"])
    assert (tree.teacher.epochs, tree.condense.outer_loops, tree.condense.period) == (10, 40, 5)
    assert tree.condense.multisize.class_wise and tree.method.name == "dm" and tree.method.dm.lr == 0.5
    assert tree.relabel.views == 4 and tree.relabel.crop_scale == (0.4, 1.0) and tree.pack.codec == "topk-f16"
    assert (tree.evaluate.width, tree.evaluate.seeds, tree.quick.sizes) == (64, 3, (1, 5, 10))
    bench = resolve("cpu", files=[path], bench=True)
    assert bench.evaluate == EvalBudget(epochs=50, max_test=2000, width=64, seeds=2, precision="auto", compile=True)
    for section in Config().as_dict():  # every section of the tree is in the page
        assert f"`{section}`" in text


def test_a_teacher_trained_from_a_tree_records_it_but_keeps_its_identity():
    from condenser.teacher import TeacherConfig

    tree = resolve("smoke", items=["relabel.views=5"])
    plain = TeacherConfig.from_profile("synthetic", None, "smoke")
    from_tree = TeacherConfig.from_profile("synthetic", None, tree)
    assert from_tree == plain and from_tree.as_dict() == plain.as_dict() and from_tree.name == plain.name
    assert from_tree.settings == tree.as_dict() and plain.settings is None
    longer = TeacherConfig.from_profile("synthetic", None, resolve("smoke", items=["teacher.epochs=2"]))
    assert longer.budget.epochs == 2 and longer.name != plain.name  # a changed budget is another cache entry


def test_teacher_network_arguments_reach_the_teacher_and_its_cache_name():
    from condenser.teacher import TeacherConfig

    cpu = TeacherConfig.from_profile("synthetic:3:1x8x8", None, get_profile("cpu"))
    assert cpu.model_kwargs == {"width": 64} and cpu.budget.epochs == 15
    wider = TeacherConfig.from_profile("synthetic:3:1x8x8", None,
                                       get_profile("cpu").updated({"teacher.model_kwargs": {"width": 128}}))
    assert wider.model_kwargs == {"width": 128} and wider.name != cpu.name
