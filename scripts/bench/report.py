"""Renders the results of scripts/bench/run.py as docs/PERFORMANCE.md."""

import math

TARGET_NOTES = """\
## Reading the figures

- **Raw tract** is `vatic-worker profile`: the optimised model run in-process on one thread, no
  HTTP, no queue. **Served** is `vaticctl bench` against the running server over keep-alive
  HTTP/1.1 on loopback, from the first byte sent to the last byte received. The difference at
  concurrency 1 is what serving costs: HTTP parsing, JSON or binary decoding, the batcher
  (a queue hand-off, or, for a cheap model's lone request, a run on the HTTP thread),
  encoding and the access log line.
- The servers run with their default settings, busy polling included (`busy_poll_us = 200`:
  an HTTP thread whose requests come that close together polls for the next instead of
  sleeping). The concurrency-1 targets are read with the load generator polling too
  (`vaticctl bench --busy-poll`), so that its own wake-up, which is not the server's doing, is
  not counted; the figures with it sleeping are beside them.
- The load generator runs on the same 2 cores as the server, so at high concurrency both
  compete for the CPU; every figure is measured that way, the baseline's included.
- The FastAPI baseline (`benches/baseline/app.py`) runs as a tutorial runs it: one uvicorn
  process, onnxruntime's default session (its thread pool uses every core). With
  `--workers 2` every request took a constant 44 ms, on each of the machines before this one
  (a delay, not work: the same at concurrency 1 and 8; `uvicorn app:app --workers 2` in
  benches/baseline, then `vaticctl bench breast_cancer -c 1,8,64 -d 4s --protocol v2-json`), and
  1,344 req/s at concurrency 64, so that setting would flatter vatic and is not used.
- Each figure is the median of the runs; latency percentiles are vaticctl's HDR histograms.
- Rerun with `scripts/bench.sh` (settings: `RUNS`, `DURATION`, `WARMUP`, `SOAK` seconds, 0
  skipping the memory run); `python3 scripts/bench/run.py --render FILE` writes this page again
  from the results a run saved (`BENCH_JSON`, by default /tmp/vatic-bench.json).
"""

HISTORY = """\
## History

What each optimisation bought, with its commands, and what limited the targets not met on the
machine of 2026-12-04: [performance-notes.md](performance-notes.md).
"""


def fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def verdict(ok):
    return "met" if ok else "**not met**"


def security(r):
    """The section on what API keys, HTTPS and encrypting the log cost; none for results from
    before these were measured."""
    if "security_open_demo_json" not in r:
        return []
    bare, keys, tls = r["security_open_demo_json"], r["security_keys_demo_json"], r["security_https_demo_json"]
    logged, sealed = r["logged_demo_json"][64], r["sealed_demo_json"][64]

    def throughput(name, off, on, goal):
        cost = 1 - on["throughput"] / off["throughput"]
        return (name, "req/s, c=64", f"<= {goal}%", fmt(off["throughput"]), fmt(on["throughput"]),
                f"{fmt(100 * cost)}%", cost <= goal / 100, off, on)

    added = keys[1]["p50"] - bare[1]["p50"]
    rows = [
        throughput("API keys + rate limit", bare[64], keys[64], 3),
        ("API keys + rate limit", "p50 us, c=1, polling", "<= 10 us", fmt(bare[1]["p50"]),
         fmt(keys[1]["p50"]), f"{fmt(added)} us ({fmt(keys[1]['p50'] / bare[1]['p50'], 3)}x)",
         added <= 10, bare[1], keys[1]),
        throughput("HTTPS", bare[64], tls[64], 15),
        throughput("Prediction log encrypted at rest (log full)", logged, sealed, 5),
    ]
    out = [
        "## Security",
        "",
        "What each protection costs against the same build with it off, in runs alternating with "
        "it off (the demo, V2 JSON, standalone on PostgreSQL; medians; at concurrency 64 twice as "
        "many rounds as elsewhere, for the costs are smaller than the run-to-run noise). The open, keyed and HTTPS "
        "servers are started afresh the same way, side by side, with the `[batching]` defaults "
        "(no profile at load, so all three batch alike). API keys: a predictor key "
        "with a rate limit of its own, 1,000,000/s, so every request passes the limiter and none is "
        "refused. HTTPS: TLS 1.3 over keep-alive connections, certificates from `vaticctl certs "
        "init`. Encryption: the log in full mode with a data key (`VATIC_DATA_KEYS`, AES-256-GCM) "
        "against the log-full runs above, in the same rounds.",
        "",
        "| protection | figure | goal | off | on | cost | |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, figure, goal, off, on, cost, ok, off_run, on_run in rows:
        errors = off_run["errors"] + on_run["errors"]
        if errors:
            cost += f", {errors} errors"
        out.append(f"| {name} | {figure} | {goal} | {off} | {on} | {cost} | {verdict(ok and not errors)} |")
    return out + [""]


def rollouts(r):
    """The section on what the canary split and a shadow cost; none for results from before
    they were measured."""
    if "rollout_split_demo_json" not in r:
        return []
    split, shadow = r["rollout_split_demo_json"], r["rollout_shadow_demo_json"]
    added = split["on"][1]["p50"] - split["off"][1]["p50"]
    whole = split.get("all")
    p99_off, p99_on = shadow["off"][16]["p99"], shadow["on"][16]["p99"]
    rise = p99_on / p99_off - 1
    sides = [(split["off"], 1), (split["on"], 1), (shadow["off"], 16), (shadow["on"], 16)]
    split_rows = []
    decision = split.get("decision_ns")
    if decision:
        base = decision["no rollout"]
        for case in ("canary 50%", "canary 50%, route key"):
            cost = (decision[case] - base) / 1000
            split_rows.append(
                f"| {case}: the decision alone, in-process | ns per request | <= 2 us | {base:,} | "
                f"{decision[case]:,} | {fmt(cost, 3)} us | {verdict(cost <= 2)} |")
    if whole:
        sides.append((whole, 1))
        decided = whole[1]["p50"] - split["off"][1]["p50"]
        split_rows.append(
            f"| canary split 100% | p50 us, c=1, polling | {'none' if decision else '<= 2 us'} | "
            f"{fmt(split['off'][1]['p50'])} | {fmt(whole[1]['p50'])} | {fmt(decided)} us | "
            + ("" if decision else
               verdict(decided <= 2 and not sum(v[1]['errors'] for v in (split['off'], whole))))
            + " |")
    spare = shadow.get("spare")
    rows = []
    if spare:
        sides += [(spare["off"], 16), (spare["on"], 16)]
        s_off, s_on = spare["off"][16]["p99"], spare["on"][16]["p99"]
        s_rise = s_on / s_off - 1
        rows.append(
            f"| shadow 100%, spare capacity | p99 us, {fmt(spare['rate'], 0)} req/s on <= 16 "
            f"connections | <= 10% | {fmt(s_off)} | {fmt(s_on)} | {fmt(100 * s_rise)}% | "
            f"{verdict(s_rise <= 0.10 and not sum(v[16]['errors'] for v in (spare['off'], spare['on'])))} |")
    errors = sum(v[c]["errors"] for v, c in sides)
    # With a spare-capacity run, the saturated one is context: the goal holds "while spare
    # capacity exists".
    rows.append(
        f"| shadow 100%, saturated | p99 us, c=16 | {'none' if spare else '<= 10%'} | "
        f"{fmt(p99_off)} | {fmt(p99_on)} | {fmt(100 * rise)}% | "
        f"{'' if spare else verdict(rise <= 0.10 and not errors)} |")
    return [
        "## Rollouts",
        "",
        "What routing unversioned requests through a rollout costs, on a model of its own (the "
        "demo's file pushed twice, so both versions answer alike), standalone on PostgreSQL, V2 "
        "JSON, the log off, in runs alternating with no rollout (medians). The split: a canary "
        + ("at 100% and at 50%, at concurrency 1 with the load generator polling. At 100% every "
           "request takes the whole of the split decision (a bucket, the canary's readiness, the "
           "rollout's counts) and one version answers all of them, as without a rollout. At 50% "
           "the requests also alternate between two copies of the model, each with its own "
           "batcher and memory. " if whole else "at 50%, at concurrency 1 with the load generator polling. ")
        + ("The decision alone is timed in-process by crates/api/benches/split.rs (criterion): "
           "the catalog's view of the model, the bucket (random, or SHA-256 of a route key), the "
           "canary's readiness in the engine, the version to ask for and the rollout's count of "
           "the answer, against the same request with no rollout; that is what the goal bounds. "
           "End to end, a p50 at c=1 moves by a few microseconds between runs of the same "
           "configuration, more than the decision costs. " if decision else "")
        + "The shadow: every request "
        "copied to a second version, at concurrency 16 (twice as many rounds)"
        + (f", once with every connection sending its next request as soon as the last is "
           f"answered (saturated: the machine has no capacity to spare for the shadow) and once "
           f"at a fixed rate of {fmt(100 * spare['share'], 0)}% of what the server answered that "
           f"way without a shadow (spare capacity: the goal's condition)." if spare else "."),
        "",
        "| rollout | figure | goal | off | on | cost | |",
        "|---|---|---|---|---|---|---|",
        *split_rows,
        f"| canary split 50% | p50 us, c=1, polling | {'none' if whole else '<= 2 us'} | "
        f"{fmt(split['off'][1]['p50'])} | {fmt(split['on'][1]['p50'])} | {fmt(added)} us | "
        f"{'' if whole else verdict(added <= 2 and not errors)} |",
        *rows,
        "",
        f"Throughput at c=16, saturated: {fmt(shadow['off'][16]['throughput'])} req/s without the "
        f"shadow, {fmt(shadow['on'][16]['throughput'])} with it; the shadow compared "
        f"{shadow['compared']:,} copies and dropped {shadow['dropped']:,} over all its runs."
        + (f" {errors} requests failed." if errors else ""),
        "",
    ]


def response_cache(r):
    """The section on what the response cache gives and costs; none for results from before
    it was measured."""
    if "cache_cnn_binary" not in r:
        return []
    c = r["cache_cnn_binary"]
    # Results from before the rounds were recorded ran RUNS of them.
    rounds = r.get("cache_rounds", r.get("settings", {}).get("runs", "RUNS"))
    rows = []
    for share, label, goal, ok in [
            ("90%", "90% of the requests repeat one input", ">= 3x", lambda x: x >= 3),
            ("0%", "no request repeats another", ">= 0.97x (a loss <= 3%)", lambda x: x >= 0.97)]:
        off, on = c[share]["cache off"][16], c[share]["cache on"][16]
        ratio = on["throughput"] / off["throughput"]
        errors = off["errors"] + on["errors"]
        rows.append(f"| {label} | {goal} | {fmt(off['throughput'])} | {fmt(on['throughput'])} | "
                    f"{fmt(ratio, 2)}x | {verdict(ok(ratio) and not errors)} |")
    return [
        "## Response cache",
        "",
        "The CNN, V2 binary, concurrency 16, throughput in req/s with the response cache off "
        f"and on, in alternating runs ({rounds} rounds; medians) "
        "against two standalone servers importing the same folder, whose model.toml opts the CNN in (`cache.max_bytes = 0` turns it off on one). "
        "`vaticctl bench --repeat`: that share of the requests repeat one input; each of the "
        "others changes the input's first element to a value no other request has.",
        "",
        "| workload | goal | off | on | on / off | |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def profile_grid(cells):
    """A `vatic-worker profile` grid: a row per batch size, a column per instance count."""
    instances = sorted({c["instances"] for c in cells})
    out = ["| batch | " + " | ".join(f"{n} instance{'s' if n > 1 else ''}" for n in instances) + " |",
           "|---|" + "---|" * len(instances)]
    for batch in sorted({c["batch_size"] for c in cells}):
        row = {c["instances"]: c for c in cells if c["batch_size"] == batch}
        out.append(f"| {batch} | " + " | ".join(
            f"{fmt(row[n]['samples_per_second'])} ({fmt(row[n]['run_p50_us'] / 1000, 2)} / "
            f"{fmt(row[n]['run_p99_us'] / 1000, 2)} ms)"
            if n in row else "-" for n in instances) + " |")
    return out


def served_levels(levels):
    """A served model's figures per concurrency, latencies in ms."""
    return [f"| {c} | {fmt(v['throughput'])} | {fmt(v['p50'] / 1000, 2)} | "
            f"{fmt(v['p99'] / 1000, 2)} | {v['errors']} |"
            for c, v in sorted(levels.items(), key=lambda kv: int(kv[0]))]


# How far the demo with `engine = "auto"` may fall below tract before it counts as more than the
# noise of alternating runs on a shared machine.
AUTO_NOISE = 0.05


def engine_targets(r):
    """The target rows of the second engine; none for results from before it was measured."""
    if "raw_cnn_onnxruntime" not in r:
        return []
    raw = r["raw_cnn_onnxruntime"]["recommended"]["best_samples_per_second"]
    served = r["served_cnn_onnxruntime_binary"]
    best = max(served, key=lambda c: served[c]["throughput"])
    share = served[best]["throughput"] / raw
    demo = r["engine_demo_binary"]
    auto = demo["auto"][64]["throughput"] / demo["tract"][64]["throughput"]
    errors = sum(v["errors"] for v in served.values()) + sum(
        v["errors"] for side in demo.values() for v in side.values())
    return [
        ("CNN served with onnxruntime, best concurrency, vs best raw onnxruntime", ">= 85%",
         f"{fmt(100 * share)}% ({fmt(served[best]['throughput'])} at c={best} vs {fmt(raw)} "
         "samples/s)", share >= 0.85 and not errors),
        ("Demo with engine = auto vs tract, c=64 (binary)",
         f"no lower than noise ({AUTO_NOISE:.0%})",
         f"{fmt(auto, 3)}x ({fmt(demo['auto'][64]['throughput'])} vs "
         f"{fmt(demo['tract'][64]['throughput'])} req/s; auto chose "
         f"{r['engine_demo_loaded']['engine']})", auto >= 1 - AUTO_NOISE and not errors),
    ]


def engines(r):
    """The section on ONNX Runtime beside tract; none for results from before it was
    measured."""
    if "raw_cnn_onnxruntime" not in r:
        return []
    cfg = r["engine_cnn_config"]
    loaded = r["engine_demo_loaded"]
    figures = "; ".join(
        f"{f['engine']} {fmt(f.get('samples_per_second'))} rows/s, one row in "
        f"{fmt(f.get('one_row_us'))} us"
        + (" (chosen)" if f["chosen"] else "") + (f" ({f['error']})" if f.get("error") else "")
        for f in loaded.get("engines", []))
    demo = r["engine_demo_binary"]
    out = [
        "## ONNX Runtime beside tract",
        "",
        "The same CNN in raw ONNX Runtime, in-process (`vatic-worker profile --engine "
        "onnxruntime`, 2 s per cell, one session per instance with the cores shared out between "
        "the instances): samples/s, and the median and 99th percentile run in ms:",
        "",
        *profile_grid(r["raw_cnn_onnxruntime"]["cells"]),
        "",
        f"Served by a standalone server whose model.toml says `engine = \"onnxruntime\"`; it "
        f"profiled the CNN at load and serves it with max_batch_size {cfg['max_batch_size']} and "
        f"{cfg['instance_group'][0]['count']} instance(s). V2 binary:",
        "",
        "| concurrency | samples/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
        *served_levels(r["served_cnn_onnxruntime_binary"]),
        "",
        f"The demo with `engine = \"auto\"` (tract serves unless ONNX Runtime is faster both in "
        f"rows a second and at one row): at load, on a standalone server of its own, {figures}. "
        "Against a like server serving it with tract, V2 binary, in alternating runs (medians):",
        "",
        "| concurrency | tract req/s | auto req/s | auto / tract | tract p50 us | auto p50 us |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted(demo["tract"]):
        t, a = demo["tract"][c], demo["auto"][c]
        out.append(f"| {c} | {fmt(t['throughput'])} | {fmt(a['throughput'])} | "
                   f"{fmt(a['throughput'] / t['throughput'], 3)}x | {fmt(t['p50'])} | {fmt(a['p50'])} |")
    return out + [""]


def batch_jobs(r):
    """The section on batch jobs: real time beside a job, and a job's rate against the served
    throughput; none for results from before they were measured."""
    if "batch_demo" not in r:
        return []
    rt = r["batch_realtime_demo_json"]
    off, on = rt["off"][16], rt["on"][16]
    p99 = on["p99"] / off["p99"]
    errors = off["errors"] + on["errors"]
    rows = [f"| real-time p99 (µs) with a job running, the demo at {fmt(rt['rate'], 0)} req/s "
            f"({rt['share']:.0%} of saturated) | <= 2x | {fmt(off['p99'])} | {fmt(on['p99'])} | "
            f"{fmt(p99, 2)}x | {verdict(p99 <= 2 and not errors)} |"]
    for key, served, label in [
            ("batch_demo", max(r["served_demo_json"][64]["throughput"],
                               r["served_demo_binary"][64]["throughput"]), "demo"),
            ("batch_cnn", max(r["served_cnn_binary"][c]["throughput"] for c in (1, 16)), "CNN")]:
        job = r[key]
        # Results from before the job's own server measured it beside the job: the standalone
        # section's figure.
        served = job.get("served", served)
        ratio = job["rows_per_second"] / served
        rows.append(f"| a job of {job['rows']:,} {label} rows, rows/s against the best served req/s "
                    f"(one row each) | >= 0.8x | {fmt(served)} | {fmt(job['rows_per_second'])} | "
                    f"{fmt(ratio, 2)}x | {verdict(ratio >= 0.8)} |")
    against = ("served throughput of the same model on the same server, measured just before "
               "and just after the job, the better of the two (the demo at concurrency 64, JSON or "
               "binary, the better; the CNN at concurrency 16, binary)"
               if "served" in r["batch_cnn"] else
               "best served throughput of the same model in this run (the demo at concurrency 64, "
               "JSON or binary; the CNN, binary)")
    return [
        "## Batch jobs",
        "",
        "A standalone server on PostgreSQL, configured as for the served figures above. Real time "
        "beside a job: the demo, V2 JSON, at a fixed rate (open loop, at most 16 connections) of "
        "the share shown of what the same server answered with 16 connections kept busy, in "
        "alternating runs with no job and with a job of 2,000,000 rows running (medians). A job's "
        "rate: the rows of a job run alone, from its first claim to its last result, against the "
        f"{against}.",
        "",
        "| what | goal | without / served | with / job | ratio | |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def render(r):
    raw = r["raw_demo_p50_us"]
    sj, sb = r["served_demo_json"], r["served_demo_binary"]
    cj, cb = r["cluster_demo_json"], r["cluster_demo_binary"]
    base = r["baseline_demo_json"]
    cnn_raw = r["raw_cnn"]["recommended"]["best_samples_per_second"]
    cnn16 = r["served_cnn_binary"][16]["throughput"]
    # The log's cost is read from its own runs, alternating off and full.
    off_json = r["unlogged_demo_json"][64]["throughput"]
    off_bin = r["unlogged_demo_binary"][64]["throughput"]
    log_json = r["logged_demo_json"][64]["throughput"]
    log_bin = r["logged_demo_binary"][64]["throughput"]

    pj, pb, pcb = r["polled_demo_json"], r["polled_demo_binary"], r["cluster_polled_demo_binary"]
    over_bin = pb[1]["p50"] - raw
    over_json = pj[1]["p50"] - raw
    over_cluster = pcb[1]["p50"] - raw
    ratio64 = sj[64]["throughput"] / base[64]["throughput"]
    best64 = max(sj[64]["throughput"], sb[64]["throughput"])
    cnn_share = cnn16 / cnn_raw
    log_cost_json = 1 - log_json / off_json
    log_cost_bin = 1 - log_bin / off_bin
    soak = r.get("soak")

    def sleeping(levels):
        """The c=1 overhead with the load generator sleeping for its answers."""
        return f"; {fmt(levels[1]['p50'] - raw)} us with it sleeping"

    rows = [
        ("Serving overhead, V2 binary, c=1 (standalone)", "<= 75 us",
         f"{fmt(over_bin)} us ({fmt(pb[1]['p50'])} served - {fmt(raw)} raw), load generator "
         f"polling{sleeping(sb)}",
         over_bin <= 75),
        ("Serving overhead, V2 JSON, c=1 (standalone)", "<= 150 us",
         f"{fmt(over_json)} us ({fmt(pj[1]['p50'])} - {fmt(raw)}), polling{sleeping(sj)}",
         over_json <= 150),
        ("Serving overhead, separate api + worker, c=1 (binary)", "<= 250 us",
         f"{fmt(over_cluster)} us ({fmt(pcb[1]['p50'])} - {fmt(raw)}), polling{sleeping(cb)}; "
         f"JSON {fmt(cj[1]['p50'] - raw)} us sleeping",
         over_cluster <= 250),
        ("Throughput vs FastAPI + onnxruntime, demo, c=64 (JSON)", ">= 6x",
         f"{fmt(ratio64, 2)}x ({fmt(sj[64]['throughput'])} vs {fmt(base[64]['throughput'])} req/s)",
         ratio64 >= 6),
        ("p99 at c=64, demo", "<= 5 ms",
         f"{fmt(sj[64]['p99'] / 1000, 2)} ms JSON, {fmt(sb[64]['p99'] / 1000, 2)} ms binary",
         max(sj[64]["p99"], sb[64]["p99"]) <= 5000),
        ("CNN served at c=16 vs best raw tract", ">= 90%",
         f"{fmt(100 * cnn_share)}% ({fmt(cnn16)} vs {fmt(cnn_raw)} samples/s)", cnn_share >= 0.9),
        ("Prediction log, full payloads on PostgreSQL, c=64", "<= 10% of throughput",
         f"{fmt(100 * log_cost_json)}% JSON, {fmt(100 * log_cost_bin)}% binary",
         max(log_cost_json, log_cost_bin) <= 0.10),
        ("Standalone start to ready (demo, release)", "<= 1 s",
         f"{fmt(r['start_first_s'], 3)} s first start, {fmt(r['start_again_s'], 3)} s restart",
         max(r["start_first_s"], r["start_again_s"]) <= 1.0),
        *engine_targets(r),
    ]
    if soak and soak["samples"]:
        kib = [k for _, k in soak["samples"]]
        settled = [k for t, k in soak["samples"] if t >= 60] or kib
        growth = (kib[-1] - settled[0]) / settled[0]
        limit_kib = (2 * r["model_bytes"] + 64 * 1024 * 1024) / 1024
        rows.append(("Worker memory under load, flat and bounded", "within 5%, < 2x models + 64 MiB",
                     f"{fmt(settled[0] / 1024)} -> {fmt(kib[-1] / 1024)} MiB after the first minute "
                     f"({fmt(100 * growth)}%), peak {fmt(max(kib) / 1024)} MiB, limit "
                     f"{fmt(limit_kib / 1024)} MiB; {soak['requests']:,} requests, {soak['errors']} errors",
                     abs(growth) <= 0.05 and max(kib) < limit_kib))

    out = [
        "# Performance",
        "",
        f"Measured on {r['date']} with `{r['command']}` ({r['settings']['runs']} runs of "
        f"{r['settings']['duration']} per figure after a {r['settings']['warmup']} warm-up; "
        f"release build).",
        "",
        f"Machine: {r['machine']}.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
    ]
    out += [f"| {name} | {goal} | {got} | {verdict(ok)} |" for name, goal, got, ok in rows]
    out += [
        "",
        "## The demo model (breast_cancer): raw, served and baseline",
        "",
        f"Raw tract, one run of one row on one thread: p50 {fmt(raw)} us.",
        "",
    ]
    floor = r.get("http_floor")
    if floor:
        out += [
            f"A bare HTTP exchange with the standalone server, no model (`GET /v2/health/live`, "
            f"`wrk -t1 -c1`): p50 {fmt(floor['p50'])} us, p99 {fmt(floor['p99'])} us. This is the "
            "floor under every served figure on this machine with the load generator sleeping: "
            "the loopback round trip and the two thread wake-ups it takes.",
            "",
        ]
    out += [
        "| server | protocol | concurrency | req/s | p50 us | p99 us | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    table = [("standalone", "v2-json", sj), ("standalone", "v2-binary", sb),
             ("api + worker", "v2-json", cj), ("api + worker", "v2-binary", cb),
             ("FastAPI + onnxruntime", "v2-json", base)]
    for server, protocol, levels in table:
        for c, v in sorted(levels.items(), key=lambda kv: int(kv[0])):
            out.append(f"| {server} | {protocol} | {c} | {fmt(v['throughput'])} | {fmt(v['p50'])} | "
                       f"{fmt(v['p99'])} | {v['errors']} |")
    out += [
        "",
        "Concurrency 1 again with the load generator polling for its answers instead of sleeping "
        "(`vaticctl bench --busy-poll`), so that its own wake-up is not counted; the servers poll "
        "between requests that come this close together in both (`busy_poll_us`, "
        "docs/deployment.md):",
        "",
        "| server | protocol | p50 us, load generator sleeping | p50 us, polling | p99 us, polling | overhead over raw, polling |",
        "|---|---|---|---|---|---|",
    ]
    for server, protocol, asleep, polled in (("standalone", "v2-json", sj, pj),
                                             ("standalone", "v2-binary", sb, pb),
                                             ("api + worker", "v2-binary", cb, pcb)):
        out.append(f"| {server} | {protocol} | {fmt(asleep[1]['p50'])} | {fmt(polled[1]['p50'])} | "
                   f"{fmt(polled[1]['p99'])} | {fmt(polled[1]['p50'] - raw)} |")
    out += [
        "",
        "With the prediction log writing every request's inputs and outputs to PostgreSQL (full "
        "mode, sample rate 1), at concurrency 64, in runs alternating with the log off (the "
        "medians of each). They follow 20 s of logged JSON load and a `CHECKPOINT`, so that "
        "PostgreSQL reuses WAL files as a server taking the log all day does; those first 20 s, "
        f"with the cluster making new WAL files, served {fmt(r['log_warmup_demo_json'][64]['throughput'])} "
        "req/s:",
        "",
        "| protocol | log off req/s | log full req/s | cost |",
        "|---|---|---|---|",
        f"| v2-json | {fmt(off_json)} | {fmt(log_json)} | {fmt(100 * log_cost_json)}% |",
        f"| v2-binary | {fmt(off_bin)} | {fmt(log_bin)} | {fmt(100 * log_cost_bin)}% |",
        "",
        *security(r),
        *rollouts(r),
        *response_cache(r),
        *batch_jobs(r),
        "## The compute-heavy CNN (testdata/models/resnet, 64x64 RGB, about 0.2 GMAC per image)",
        "",
        "Raw tract, `vatic-worker profile` (2 s per cell): samples/s, and the median and 99th "
        "percentile run in ms:",
        "",
    ]
    out += profile_grid(r["raw_cnn"]["cells"])
    cfg = r["cnn_config"]
    out += [
        "",
        f"The server profiled it at load and serves it with max_batch_size "
        f"{cfg['max_batch_size']} and {cfg['instance_group'][0]['count']} instance(s). Served, V2 binary:",
        "",
        "| concurrency | samples/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    out += served_levels(r["served_cnn_binary"])
    out += ["", *engines(r)]
    if soak and soak["samples"]:
        out += ["", "## Worker memory under load", "",
                f"Resident memory of the worker process while `vaticctl bench -c 8` ran for "
                f"{r['settings']['soak_s']} s against the api in front of it, sampled every 5 s "
                f"(models on disk: {r['model_bytes'] / 1024 / 1024:.1f} MiB):", "",
                "| seconds | RSS MiB |", "|---|---|"]
        for t, k in soak["samples"][:: max(1, len(soak["samples"]) // 12)]:
            out.append(f"| {t:.0f} | {fmt(k / 1024)} |")
    out += ["", TARGET_NOTES, HISTORY]
    return "\n".join(out).rstrip() + "\n"
