"""Packing: tokens/s and peak memory of gptresume's bounded-memory packing against run_clm.py's and nanoGPT's
prepare.py's ways of doing the same work, on generated text of two sizes (the second twice the first), in the same
run. Targets: gptresume at least as fast as the faster peer; its peak memory within 10% between the sizes (it
must not grow with the corpus) and under 2 GB."""

from __future__ import annotations

import shutil

from common import Plan, Runner, median, rotated

PEERS = ["gptresume", "run_clm", "nanogpt"]


def measure(r: Runner, plan: Plan) -> dict:
    from packing_peers import make_corpus

    out = {"sizes_mb": list(plan.packing_mb), "runs": {}}
    for mb in plan.packing_mb:
        corpus = r.work / f"pack-corpus-{mb}"
        if not corpus.is_dir():
            make_corpus(corpus, mb)
        runs = {p: [] for p in PEERS}
        for rep in range(plan.packing_reps):
            for peer in rotated(PEERS, rep):
                work = r.work / f"pack-{mb}-{peer}-{rep}"
                res = r.worker("pack", "--peer", peer, "--corpus", str(corpus), "--tokenizer",
                               str(r.work / "tok-demo"), "--work", str(work), timeout=3 * 3600)
                shutil.rmtree(work, ignore_errors=True)
                runs[peer].append(res)
                r.log(f"  pack {mb} MB {peer}: {res['tokens_per_s']:,.0f} tok/s, peak RSS {res['peak_rss_mb']:.0f} MB "
                      f"(largest worker {res['peak_worker_rss_mb']:.0f} MB)")
        out["runs"][str(mb)] = {p: {"tokens_per_s": median([x["tokens_per_s"] for x in v]),
                                    "peak_rss_mb": median([x["peak_rss_mb"] for x in v]),
                                    "peak_worker_rss_mb": median([x["peak_worker_rss_mb"] for x in v]),
                                    "tokens": v[0]["tokens"], "raw": v} for p, v in runs.items()}
    return out
