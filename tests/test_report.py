import base64
import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest

from rlhfscale.analysis.claims import CLAIMS, VERDICTS
from rlhfscale.analysis.claims import SESOI as CLAIMS_SESOI
from rlhfscale.analysis.plots import summarize
from rlhfscale.analysis.report import write_report
from rlhfscale.analysis.table import final_points, to_table

SPEC = "name: tiny <study>\ngrid:\n  rl.algorithm: [ppo, grpo]\n"


def study_rows():
    """Two seeds of a small grid over RM data volume, RL algorithm and samples, with RL curves."""
    rng = np.random.default_rng(0)
    rows = []
    for seed, prompts, algorithm, n in itertools.product(range(2), [100, 400, 1600], ["ppo", "grpo"], [2, 8, 32]):
        for step in range(4):
            kl = 0.5 * step
            rows.append({
                "trial": f"p{prompts}-{algorithm}-n{n}", "seed": seed, "step": step,
                "data.prompts": prompts, "data.responses_per_prompt": 4, "rm.kind": "orm",
                "rl.algorithm": algorithm, "rl.n_samples": n,
                "rm/pair_acc": 0.6 + 0.02 * np.log2(prompts / 100) + rng.normal(0, 0.003),
                "eval/pass@1_before": 0.30,
                "eval/pass@1": 0.30 + 0.1 * (1 - np.exp(-step)) + rng.normal(0, 0.003),
                "rl/kl": kl, "rl/gold_reward": np.sqrt(kl) * 0.8 - 0.2 * kl + rng.normal(0, 0.01),
                "rl/proxy_reward": 0.4 * np.sqrt(kl),
                "flops/rl": step * n * 1e12, "flops/sft": 1e14, "flops/total": 1e14 + step * n * 1e12,
            })
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    index = write_report(study_rows(), out, spec_text=SPEC, version="9.8.7", title="Tiny study")
    return out, index


def test_writes_every_file(report):
    out, index = report
    assert index == out / "index.html"
    assert {"index.html", "claims.json", "metrics.csv", "overoptimization.png"} <= {p.name for p in out.iterdir()}


def test_claims_json_has_all_ids_valid_verdicts_and_plots(report):
    out, _ = report
    entries = json.loads((out / "claims.json").read_text())
    assert [e["id"] for e in entries] == list(CLAIMS)
    by_id = {e["id"]: e for e in entries}
    for e in entries:
        assert e["verdict"] in VERDICTS
        assert {"title", "detail", "effect", "ci_low", "ci_high", "n_seeds", "smallest_effect_of_interest",
                "min_detectable", "range_low", "range_high"} <= e.keys()
        assert e["smallest_effect_of_interest"] == CLAIMS_SESOI[e["id"]] or e["id"] == "shaping_stability"
        if e["verdict"] != "not tested":
            assert e["range_low"] <= e["ci_low"] <= e["effect"] <= e["ci_high"] <= e["range_high"]
            assert e["min_detectable"] > 0
        assert (e["plot"] is None) == (e["verdict"] == "not tested")
        if e["plot"]:
            assert (out / e["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert by_id["rm_data_volume"]["verdict"] == "supported" and by_id["rm_data_volume"]["n_seeds"] == 2
    assert by_id["rm_data_volume"]["effect"] == pytest.approx(0.02, abs=0.003)
    assert by_id["policy_size"]["verdict"] == "not tested" and by_id["policy_size"]["effect"] is None
    assert by_id["ppo_vs_grpo"]["verdict"] == "supported"


def test_html_lists_every_claim_links_plots_and_embeds_images(report):
    out, index = report
    page = index.read_text()
    entries = json.loads((out / "claims.json").read_text())
    for e in entries:
        assert e["id"] in page
        if e["plot"]:
            assert f'href="#plot-{e["id"]}"' in page and f'id="plot-{e["id"]}"' in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(images) == len(pngs)
    assert base64.b64decode(images[-1]) == (out / "overoptimization.png").read_bytes()
    assert "name: tiny &lt;study&gt;" in page and "9.8.7" in page and "<title>Tiny study</title>" in page
    assert "<th>smallest effect of interest</th><th>smallest detectable (80% power)</th>" in page


def test_metrics_csv_is_the_tidy_table(report):
    out, _ = report
    csv = pd.read_csv(out / "metrics.csv")
    assert len(csv) == len(study_rows())
    assert np.allclose(csv["eval/gain"], csv["eval/pass@1"] - csv["eval/pass@1_before"])
    assert csv["data.volume"].tolist() == (csv["data.prompts"] * 4).tolist()


def test_the_page_opens_with_what_was_learned(report):
    out, index = report
    page = index.read_text()
    entries = json.loads((out / "claims.json").read_text())
    learned = page[page.index("What this grid says"):page.index("<h2>Claims</h2>")]
    for entry in entries:
        if entry["verdict"] == "inconclusive":
            assert entry["id"] in learned
    assert ("Supported here:" in learned) == any(e["verdict"] == "supported" for e in entries)


def test_notes_head_the_page(tmp_path):
    index = write_report(study_rows(), tmp_path, spec_text=SPEC, version="1", title="t",
                         notes=["this study mixes artifacts of 2 code versions"])
    page = index.read_text()
    assert page.index("Note: this study mixes artifacts of 2 code versions") < page.index("<table")


def test_accepts_a_table_and_a_grid_with_nothing_to_test(tmp_path):
    table = to_table([{"trial": "only", "seed": 0, "eval/pass@1": 0.5}])
    index = write_report(table, tmp_path, spec_text="", version="0", title="Empty")
    entries = json.loads((tmp_path / "claims.json").read_text())
    assert [e["verdict"] for e in entries] == ["not tested"] * len(CLAIMS)
    assert "nothing to plot" in index.read_text() and not list(tmp_path.glob("*.png"))


def test_to_table_fills_identifiers_and_derives_columns():
    table = to_table([
        {"trial": "b", "eval/pass@1": 0.5, "eval/pass@1_before": 0.4, "data.prompts": 10, "data.responses_per_prompt": 3},
        {"trial": "a", "seed": 1, "step": 5, "eval/pass@1": 0.3, "eval/pass@1_before": 0.0, "eval/gain": 0.25},
        {"trial": "a", "seed": 1, "step": 2, "eval/pass@1": 0.2, "eval/pass@1_before": 0.1},
    ])
    assert list(table.columns[:3]) == ["trial", "seed", "step"]
    assert table[["trial", "seed", "step"]].values.tolist() == [["a", 1, 2], ["a", 1, 5], ["b", 0, 0]]
    assert table["eval/gain"].tolist() == pytest.approx([0.1, 0.25, 0.1])  # a recorded gain is kept
    assert table["eval/gain_rel"].tolist()[0] == pytest.approx(1.0)
    assert np.isnan(table["eval/gain_rel"][1])  # no relative gain from a zero start
    assert table["data.volume"].tolist()[2] == 30
    assert final_points(table)["step"].tolist() == [5, 0]


def test_to_table_refuses_rows_without_trial_or_with_text_metrics():
    with pytest.raises(ValueError, match="'trial'"):
        to_table([{"seed": 0, "eval/pass@1": 0.5}])
    with pytest.raises(ValueError, match="'rm/pair_acc' must hold numbers"):
        to_table([{"trial": "t", "rm/pair_acc": "high"}])


def test_final_points_carry_metrics_logged_once_per_run():
    table = to_table([
        {"trial": "t", "step": 0, "rm/pair_acc": 0.7, "eval/pass@1": 0.3},
        {"trial": "t", "step": 10, "eval/pass@1": 0.4},
    ])
    final = final_points(table)
    assert final[["step", "rm/pair_acc", "eval/pass@1"]].values.tolist() == [[10, 0.7, 0.4]]


def test_error_bars_stay_in_the_metric_range():
    """Two seeds of an accuracy near 1 (over 20 prompts) and of one that ties at 0: bars inside [0, 1], with width."""
    rows = [{"trial": t, "seed": s, "rl.n_samples": n, "eval/pass@1": v}
            for t, n, values in (("a", 2, (1.0, 0.95)), ("b", 4, (0.0, 0.0))) for s, v in enumerate(values)]
    s = summarize(to_table(rows), "rl.n_samples", "eval/pass@1")
    assert (s["low"] >= 0).all() and (s["high"] <= 1).all()
    assert (s["high"] - s["low"] > 0).all()  # the tie at 0 still has the binomial width
    assert s["high"].iloc[0] == 1.0 and s["low"].iloc[1] == 0.0


def test_fitted_trends_carry_a_band_inside_the_metric_range():
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from rlhfscale.analysis.plots import trend

    rows = [{"trial": f"v{v}", "seed": s, "data.volume": v, "rm/pair_acc": a + 0.01 * s}
            for s in range(2) for v, a in ((100, 0.90), (400, 0.96), (1600, 0.99))]
    fig, ax = plt.subplots()
    trend(ax, to_table(rows), "data.volume", "rm/pair_acc")
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert bands, "no confidence band drawn around the fitted trend"
    ys = np.concatenate([path.vertices[:, 1] for band in bands for path in band.get_paths()])
    assert ys.min() >= 0 and ys.max() <= 1 and ys.max() == pytest.approx(1.0)  # clipped at the ceiling
    plt.close(fig)
