"""`evaluate`: the three rows on the bundle's test split and on a user's folder, in-process and against a server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cloud_server import serve_in_thread

from edge_sdk.bundle import load_bundle
from edge_sdk.cli import main as cli_main
from quantize.evaluate import EvaluateError, evaluate_bundle, format_table, hybrid_rule, resolve_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEY = "evaluate-key-0123456789"


@pytest.fixture(scope="module")
def inprocess(quantized_bundle_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-inprocess")
    return evaluate_bundle(quantized_bundle_session, "digits", out_dir=out, progress=False), out


@pytest.fixture(scope="module")
def server_url(quantized_bundle_session):
    with serve_in_thread([quantized_bundle_session], api_keys=[KEY], max_delay_ms=2) as url:
        yield url


def rows_by_name(ev) -> dict:
    return {r.name: r for r in ev.rows}


def test_inprocess_rows_match_the_quantize_report(inprocess, quantized_bundle_session):
    ev, _ = inprocess
    rows = rows_by_name(ev)
    assert list(rows) == ["edge-only", "cloud-only", "hybrid"]
    q = load_bundle(quantized_bundle_session).manifest.reports["quantize"]["test"]
    n = q["n"]
    assert all(r.n == n for r in rows.values())  # the bundle's own test split, every image readable
    # the same models on the same images as `quantize` scored them, through other code paths
    assert rows["edge-only"].accuracy == pytest.approx(q["accuracy"]["edge_int8"], abs=1.01 / n)
    assert rows["cloud-only"].accuracy == pytest.approx(q["accuracy"]["cloud_keras"], abs=1.01 / n)
    for r in rows.values():
        assert 0.0 <= r.accuracy <= 1.0 and 0.0 <= r.offload <= 1.0
        assert r.latency_mean_ms > 0 and r.latency_p95_ms >= r.latency_mean_ms * 0.5
        assert np.sum(r.confusion_matrix) == n
        assert np.trace(r.confusion_matrix) == round(r.accuracy * n)
    assert rows["edge-only"].offload == 0 and rows["edge-only"].bytes_per_image == 0
    assert rows["cloud-only"].offload == 1 and rows["cloud-only"].bytes_per_image > 100
    h = rows["hybrid"]
    assert h.bytes_per_image == pytest.approx(h.offload * rows["cloud-only"].bytes_per_image, rel=0.2)
    assert set(h.model_bytes) == {"edge", "cloud"} and all(v > 0 for v in h.model_bytes.values())
    assert h.reasons["confident"] + h.reasons["low_confidence"] == n
    assert h.offload == pytest.approx(h.reasons["low_confidence"] / n)


def test_hybrid_row_is_the_point_of_the_curve_at_the_bundle_threshold(inprocess, quantized_bundle_session):
    ev, _ = inprocess
    routing = load_bundle(quantized_bundle_session).manifest.routing
    t, h = ev.tradeoff, rows_by_name(ev)["hybrid"]
    assert (t.metric, t.threshold) == (routing.metric, routing.threshold)
    assert t.offload == pytest.approx(h.offload) and t.accuracy == pytest.approx(h.accuracy)
    c = t.curves[t.metric]
    # the curve runs from "everything on the edge" to "everything to the cloud"
    assert c.offload.min() == 0 and c.offload.max() == 1
    assert c.accuracy[np.argmin(c.offload)] == pytest.approx(t.edge_accuracy)
    assert c.accuracy[np.argmax(c.offload)] == pytest.approx(t.cloud_accuracy)
    assert min(abs(c.offload - h.offload)) < 1e-9  # the chosen point lies on the curve


def test_inprocess_report_folder(inprocess):
    ev, out = inprocess
    rep = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in rep["rows"]] == ["edge-only", "cloud-only", "hybrid"]
    assert rep["cloud"]["where"] == "in-process" and rep["data"]["split"] == "test"
    assert rep["rows"][2]["accuracy"] == pytest.approx(ev.rows[2].accuracy)
    assert rep["model_bytes"]["edge"] < rep["model_bytes"]["cloud"]
    for path in [rep["files"]["accuracy_vs_offload"], *rep["files"]["confusion"].values()]:
        data = Path(path).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert len(rep["files"]["confusion"]) == 3
    table = ev.table()
    assert all(name in table for name in ("edge-only", "cloud-only", "hybrid", "int8 .tflite", ".keras"))


def test_against_a_server_matches_inprocess(inprocess, quantized_bundle_session, server_url, tmp_path):
    ev_local, _ = inprocess
    ev = evaluate_bundle(quantized_bundle_session, "digits", cloud_url=server_url, api_key=KEY, upload="original",
                         out_dir=tmp_path, progress=False)
    local, remote = rows_by_name(ev_local), rows_by_name(ev)
    n = remote["cloud-only"].n
    # "original" sends the PNG files themselves: the server's preprocessing gives the same pixels
    assert remote["cloud-only"].accuracy == pytest.approx(local["cloud-only"].accuracy, abs=1.01 / n)
    assert remote["edge-only"].accuracy == local["edge-only"].accuracy
    h = remote["hybrid"]
    # the SDK's own routing, run for real, lands where the offline curve says it should
    assert h.offload == pytest.approx(ev.tradeoff.offload, abs=1.01 / n)
    assert h.accuracy == pytest.approx(ev.tradeoff.accuracy, abs=1.01 / n)
    assert ev.tradeoff.measured == (h.offload, h.accuracy)
    assert remote["cloud-only"].reasons == {"cloud_only": n}
    assert remote["cloud-only"].bytes_per_image > 100 and remote["cloud-only"].latency_mean_ms > 0
    assert h.bytes_per_image == pytest.approx(h.offload * remote["cloud-only"].bytes_per_image, rel=0.25)
    assert set(h.reasons) <= {"confident", "low_confidence", "out_of_distribution"}  # no cloud errors, no fallbacks
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["cloud"] == {"where": "http", "url": server_url, "upload": "original", "model": rep["name"]}


def test_wrong_api_key_is_a_clear_error(quantized_bundle_session, server_url):
    with pytest.raises(EvaluateError, match="401"):
        evaluate_bundle(quantized_bundle_session, "digits", cloud_url=server_url, api_key="wrong-key-0123456789",
                        progress=False)


def test_cli_on_a_user_folder(quantized_bundle_session, digits_dir, tmp_path, capsys):
    folder = tmp_path / "mine"
    for d in ("1", "4"):
        (folder / d).mkdir(parents=True)
        for p in sorted((digits_dir / d).glob("*.png"))[:8]:
            shutil.copy(p, folder / d / p.name)
    (folder / "4" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "report"
    rc = cli_main(["evaluate", str(quantized_bundle_session), "--data", str(folder), "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "16 images" in text and "skipped 1 unreadable image" in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["split"] == "folder" and rep["data"]["n"] == 16 and rep["data"]["skipped"] == 1
    for r in rep["rows"]:
        cm = np.array(r["confusion_matrix"])
        assert cm.shape == (10, 10) and cm.sum() == 16
        assert cm[1].sum() == 8 and cm[4].sum() == 8  # folder names mapped onto the bundle's label indices
    assert (out / "accuracy_vs_offload.png").read_bytes().startswith(PNG_MAGIC)


def test_folder_with_unknown_classes_is_refused(quantized_bundle_session, digits_dir, tmp_path, capsys):
    folder = tmp_path / "other"
    for d in ("3", "cat"):
        (folder / d).mkdir(parents=True)
        shutil.copy(next((digits_dir / "3").glob("*.png")), folder / d / "x.png")
    rc = cli_main(["evaluate", str(quantized_bundle_session), "--data", str(folder), "--quiet",
                   "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "cat" in err and "not labels of the bundle" in err
    assert not (tmp_path / "r").exists()


def test_unquantized_bundle_is_refused(trained_bundle_session):
    with pytest.raises(EvaluateError, match="hybrid-vision quantize"):
        evaluate_bundle(trained_bundle_session, "digits", progress=False)


def test_only_the_recorded_source_means_the_test_split(quantized_bundle_session, digits_dir):
    b = load_bundle(quantized_bundle_session)
    own = resolve_data(b, "digits")
    assert own.split == "test" and len(own.items) == b.manifest.data.counts["test"]
    whole = resolve_data(b, str(digits_dir))  # the same images, named by path: not the recorded source
    assert whole.split == "folder" and len(whole.items) == sum(b.manifest.data.counts.values())


def test_format_table_lines_up():
    from quantize.evaluate import Row

    rows = [Row(name, 10, 0.5, 0.5, off, 1.234, 2.5, "x", b, {"edge": 2048}, {}, [[1]])
            for name, off, b in (("edge-only", 0.0, 0.0), ("hybrid", 0.25, 300.0))]
    lines = format_table(rows, "title").splitlines()
    assert lines[0] == "title" and lines[2].startswith("----")
    assert "50.00%" in lines[3] and "25.0%" in lines[4] and "2.0 KB int8 .tflite" in lines[4]
    end = lines[1].index("accuracy") + len("accuracy")  # numbers are right-aligned under their header
    assert lines[3].index("50.00%") + len("50.00%") == end == lines[4].index("50.00%") + len("50.00%")


def test_the_hybrid_rule_says_what_a_threshold_means():
    assert hybrid_rule("max_prob", 0.9995) == "hybrid = edge answer when max_prob >= 0.9995"
    assert hybrid_rule("entropy", 0.25) == "hybrid = edge answer when entropy <= 0.25"
    assert hybrid_rule("deferral", 0.1) == "hybrid = edge answer when deferral <= 0.1"
    # a certified max_prob threshold under 0 offloads nothing in distribution: said so, not as "max_prob >= -0.0355"
    rule = hybrid_rule("max_prob", -0.03546)
    assert rule.startswith("hybrid = edge answer always") and "out-of-distribution" in rule and ">=" not in rule
