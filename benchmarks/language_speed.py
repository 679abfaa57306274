"""MiDashengLM decoding speed on the CPU, bf16 and int8, against the memory-bandwidth bound and transformers.

Random full-size weights (Qwen2.5-Omni-7B thinker text sizes: hidden 3584, 28 layers, 28 heads / 4
key-value heads, intermediate 18944, vocabulary 152064; the Dasheng-0.6B encoder and the projector),
made directly in bf16 (never float32), tensor by tensor from fixed seeds; speed does not depend on the
values. In one run:

* the read bandwidth: the fastest of a large float32 ``sum`` and a float32 matrix-vector product
  (which reads its matrix once), best of several tries;
* the matrix-vector kernels torch offers for one token (bf16 ``linear``, ``torch._weight_int8pack_mm``,
  ``torch.ao`` dynamic int8, int8 converted then multiplied) on the 7B's largest layer shape;
* per precision, in a fresh process (so each has its own peak RSS): the decoder built as auricle
  builds it (int8 through the converter the loader uses, tensor by tensor), then auricle's path on a
  10 s clip (encoder + projector + prefill of a ~70-token prompt = time to first token; then decode
  tokens/s from the same greedy loop ``describe`` runs), transformers' own ``generate`` (greedy) on
  the same modules and ``inputs_embeds``, peak RSS, and the bound = weight bytes read per token ÷
  bandwidth;
* top-1 next-token agreement of int8 with bf16 at ``--agreement-steps`` positions, teacher-forced:
  both read the same prompt followed by the same random tokens, and the argmax of their logits at each
  position is compared (with random weights; docs/benchmarks.md says what that means).

    python benchmarks/language_speed.py --json benchmarks/results/language_speed.json

Needs about 17 GB free for bf16: with less ``--layers`` is lowered (or give it), and the per-token
figures are then also given scaled to 28 layers by bytes read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

FULL_LAYERS = 28
ENCODER = {"embed_dim": 1280, "depth": 32, "num_heads": 16}
CLIP_SECONDS = 10.0
GB = 1e9


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def best_seconds(call, repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth(gigabytes: float = 1.0, repeats: int = 5) -> dict:
    """GB/s of the fastest whole-tensor reads torch does here (float32 sum; float32 matrix × vector)."""
    import torch

    values = torch.ones(int(gigabytes * GB / 4) // 4096 * 4096)
    summed = values.numel() * 4 / best_seconds(values.sum, repeats) / GB
    matrix = values.view(-1, 4096)
    vector = torch.ones(4096)
    gemv = matrix.numel() * 4 / best_seconds(lambda: torch.mv(matrix, vector), repeats) / GB
    return {"sum_gb_s": summed, "gemv_fp32_gb_s": gemv, "gb_s": max(summed, gemv)}


def kernels(repeats: int = 5) -> dict:
    """ms for one token through the 7B's largest layer shape (18944 x 3584) with each candidate kernel."""
    import warnings

    import torch

    from auricle.language.precision import quantize_weight

    torch.manual_seed(0)
    weight = torch.randn(18944, 3584, dtype=torch.bfloat16) * 0.02
    quantized, scale = quantize_weight(weight)
    x = torch.randn(1, 3584, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear = torch.nn.Linear(3584, 18944, bias=False)
        linear.weight.data = weight.float()
        dynamic = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                         dtype=torch.qint8)
        del linear
    candidates = {
        "bf16 linear": lambda: torch.nn.functional.linear(x, weight),
        "int8 _weight_int8pack_mm (weight-only)": lambda: torch._weight_int8pack_mm(x, quantized, scale),
        "int8 torch.ao dynamic (quantises activations too)": lambda: dynamic(x.float()),
        "int8 converted to bf16, then linear": lambda: torch.nn.functional.linear(x, quantized.to(torch.bfloat16)) * scale,
    }
    with torch.inference_mode():
        return {name: best_seconds(call, repeats) * 1e3 for name, call in candidates.items()}


# -- the model, in a child process per precision ------------------------------------------------------
#: Normal bf16 values (std 0.02) that every weight is cut from at its own offset: drawing 8 B values
#: one by one takes minutes here, copying them seconds. An odd length, so no two rows line up.
BANK_VALUES = (1 << 26) + 12_345
_bank = []


def random_tensor(key: str, shape, dtype):
    """A reproducible random bf16 tensor for ``key`` (the same in every process), made directly in bf16."""
    import torch

    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "init_bn.weight", "running_var")):
        return torch.ones(shape, dtype=torch.bfloat16)
    if key.endswith("running_mean"):
        return torch.full(shape, -40.0, dtype=torch.bfloat16)
    if not _bank:
        _bank.append(torch.randn(BANK_VALUES, generator=torch.Generator().manual_seed(0),
                                 dtype=torch.bfloat16).mul_(0.02))
    bank = _bank[0]
    out = torch.empty(shape, dtype=torch.bfloat16).view(-1)
    offset, filled = zlib.crc32(key.encode()) % BANK_VALUES, 0
    while filled < out.numel():
        piece = min(out.numel() - filled, BANK_VALUES - offset)
        out[filled:filled + piece] = bank[offset:offset + piece]
        filled, offset = filled + piece, 0
    return out.view(shape)


def build_network(layers: int, precision: str, with_encoder: bool = True):
    """MiDashengLM with random bf16 weights; ``int8`` passes every tensor through the loader's converter."""
    import torch
    import transformers

    from auricle.frontend import mel_filterbank
    from auricle.language.config import OMNI_7B_TEXT, DecoderConfig, LanguageConfig
    from auricle.language.decoder import build_decoder, qwen2_config
    from auricle.language.encoder import FILTERBANK, WINDOW, build_encoder
    from auricle.language.model import MiDashengLM
    from auricle.language.precision import converter
    from auricle.language.projector import AudioProjector
    from auricle.models.dasheng import Dasheng
    from auricle.models.dasheng_config import DashengConfig

    convert = converter(precision)
    decoder_config = DecoderConfig(**{**OMNI_7B_TEXT, "num_hidden_layers": layers})
    config = LanguageConfig(decoder=decoder_config, encoder=dict(ENCODER))
    with torch.device("meta"):
        shapes = {key: (value.shape, value.dtype) for key, value in
                  transformers.Qwen2ForCausalLM(qwen2_config(decoder_config)).state_dict().items()}
        encoder_shapes = {key: (value.shape, value.dtype) for key, value in
                          Dasheng(DashengConfig(**ENCODER)).state_dict().items()}
    state = {}
    for key, (shape, dtype) in shapes.items():  # one tensor at a time, converted as the loader does
        tensor = random_tensor(f"decoder.{key}", shape, dtype)
        state.update({name[len("decoder."):]: value
                      for name, value in (convert(f"decoder.{key}", tensor) if convert else {key: tensor}).items()})
        del tensor
    decoder = build_decoder(decoder_config, state, "random", int8=precision == "int8")
    del state
    encoder = None
    if with_encoder:
        encoder_state = {key: random_tensor(f"audio_encoder.{key}", shape, dtype)
                         for key, (shape, dtype) in encoder_shapes.items()}
        encoder_state[WINDOW] = torch.hann_window(512, periodic=True).to(torch.bfloat16)
        encoder_state[FILTERBANK] = mel_filterbank().to(torch.bfloat16)
        encoder = build_encoder(ENCODER, encoder_state, "random")
    with torch.device("meta"):
        projector = AudioProjector(ENCODER["embed_dim"], decoder_config.hidden_size, config.subsample_factor)
    projector.load_state_dict({key: random_tensor(f"audio_projector.{key}", value.shape, value.dtype)
                               for key, value in projector.state_dict().items()}, assign=True)
    return MiDashengLM(config, projector.eval(), decoder, encoder).eval().requires_grad_(False)


def module_bytes(module) -> int:
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    return sum(t.numel() * t.element_size() for name, t in tensors.items() if "rotary" not in name)


def decode_bytes(network) -> dict:
    """Bytes read per decoded token (every decoder tensor but the input embeddings; the KV cache, a few MB,
    left out), all decoder bytes, and one layer's bytes (to scale a run with fewer layers to 28)."""
    decoder = network.decoder
    total = module_bytes(decoder)
    embeddings = decoder.get_input_embeddings().weight
    per_token = total - embeddings.numel() * embeddings.element_size()
    layer = module_bytes(decoder.model.layers[0])
    rest = per_token - layer * len(decoder.model.layers)
    return {"bytes_per_token": per_token, "decoder_bytes": total, "layer_bytes": layer,
            "bytes_per_token_28": rest + layer * FULL_LAYERS,
            "decoder_bytes_28": total + layer * (FULL_LAYERS - len(decoder.model.layers))}


def prompt_ids(audio_tokens: int, seed: int = 0) -> list[int]:
    """A prompt shaped like the rendered caption prompt: ChatML markers, the audio block, a question."""
    import numpy as np

    from auricle.language import choices

    text = np.random.default_rng(seed).integers(0, 151_000, 20).tolist()
    return ([151644, *text[:2], choices.DEFAULT_AUDIO_BOS_TOKEN_ID] + [choices.DEFAULT_AUDIO_TOKEN_ID] * audio_tokens
            + [choices.DEFAULT_AUDIO_EOS_TOKEN_ID, *text[2:14], 151645, 198, 151644, 77091, 198])


def auricle_run(network, waveform, prompt, new_tokens: int) -> dict:
    """auricle's path: encoder + projector, then the greedy KV-cache loop describe() streams from."""
    import torch

    start = time.perf_counter()
    tokens = network.encode_audio(torch.from_numpy(waveform), "clip")
    audio = network.project(tokens[None])[0]
    encoded = time.perf_counter()
    stamps = []
    for _ in network.steps([prompt], [audio], new_tokens, stop_ids=()):
        stamps.append(time.perf_counter())
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {"encode_s": encoded - start, "ttft_s": stamps[0] - start, "prefill_s": stamps[0] - encoded,
            "decode_tok_s": decode, "tokens": len(stamps), "total_s": stamps[-1] - start}, audio


def generate_run(network, prompt, audio, new_tokens: int) -> dict:
    """transformers' own greedy generate on the same decoder and input embeddings; tokens timed by a streamer."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        embeddings = network.embed(ids, [audio])
        streamer = Stamps()
        start = time.perf_counter()
        network.decoder.generate(inputs_embeds=embeddings, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, streamer=streamer)
    stamps = streamer.times[-new_tokens:]  # the prompt's put (if any) comes first
    return {"first_token_s": stamps[0] - start, "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "tokens": len(stamps)}


def forced_logits(network, prompt, audio, steps: int):
    """Logits (steps, vocab) for the next token after the prompt and after each of ``steps - 1`` forced tokens."""
    import torch

    forced = torch.randint(0, network.config.decoder.vocab_size, (steps - 1,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    ids = torch.tensor([prompt + forced])
    with torch.inference_mode():
        embeddings = network.embed(ids, [audio])
        hidden = network.decoder.model(inputs_embeds=embeddings,
                                       position_ids=torch.arange(ids.shape[1])[None]).last_hidden_state
        return network.decoder.lm_head(hidden[0, len(prompt) - 1:]).float()


def interleaved(args) -> None:
    """bf16 and int8 decoders in one process, decoding in alternation: the ratio with the load shared alike."""
    import statistics

    import torch

    networks = {precision: build_network(args.layers, precision, with_encoder=False) for precision in ("bf16", "int8")}
    prompt = prompt_ids(50)
    audio = torch.randn(50, 3584, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    rates = {precision: [] for precision in networks}
    for _ in range(args.rounds):
        for precision, network in networks.items():
            stamps = [time.perf_counter() for _ in network.steps([prompt], [audio], args.new_tokens, stop_ids=())]
            rates[precision].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    ratios = [i / b for i, b in zip(rates["int8"], rates["bf16"])]
    print(json.dumps({"layers": args.layers, "rounds": args.rounds, "tokens": args.new_tokens, "tok_s": rates,
                      "int8_over_bf16": ratios, "median_ratio": statistics.median(ratios),
                      "bytes_per_token": {p: decode_bytes(n)["bytes_per_token"] for p, n in networks.items()},
                      "peak_rss_gb": peak_rss_gb()}))


def child(args) -> None:
    import numpy as np
    import torch

    from auricle.language import choices

    torch.manual_seed(0)
    if args.lm_head_bf16:  # the experiment: quantise only the layers' projections
        import re

        from auricle.language import precision

        precision.INT8_MODULES = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")
    start = time.perf_counter()
    network = build_network(args.layers, args.child)
    result = {"precision": args.child, "layers": args.layers, "load_s": time.perf_counter() - start,
              "rss_after_load_gb": peak_rss_gb()}
    result.update(decode_bytes(network))
    waveform = (np.random.default_rng(0).standard_normal(int(CLIP_SECONDS * choices.SAMPLE_RATE)) * 0.1).astype(np.float32)
    prompt = prompt_ids(choices.audio_token_count(len(waveform)))
    result["prompt_tokens"] = len(prompt)
    result["auricle"], audio = auricle_run(network, waveform, prompt, args.new_tokens)
    result["generate"] = generate_run(network, prompt, audio, args.new_tokens)
    result["auricle_again"], _ = auricle_run(network, waveform, prompt, args.new_tokens)
    if args.agreement_steps:
        clock = time.perf_counter()
        logits = forced_logits(network, prompt, audio, args.agreement_steps)
        result["agreement_prefill_s"] = time.perf_counter() - clock
        reference = Path(args.reference)
        if args.child == "int8" and not reference.is_file():
            pass  # no bf16 run before this one: nothing to agree with
        elif args.child == "bf16":
            torch.save(logits.to(torch.bfloat16), reference)
        else:
            bf16 = torch.load(reference, weights_only=True).float()
            top = bf16.topk(2, dim=-1).values
            result["agreement"] = {
                "steps": len(logits), "top1": float((logits.argmax(-1) == bf16.argmax(-1)).float().mean()),
                "max_abs_logit_diff": float((logits - bf16).abs().max()),
                "logit_std": float(bf16.std()),
                "median_top1_margin": float((top[:, 0] - top[:, 1]).median()),
            }
    result["peak_rss_gb"] = peak_rss_gb()
    print(json.dumps(result))


# -- the parent: bandwidth, kernels, one child per precision, the table ------------------------------
def run_child(precision: str, args, reference: Path) -> dict:
    command = [sys.executable, __file__, "--child", precision, "--layers", str(args.layers), "--new-tokens",
               str(args.new_tokens), "--agreement-steps", str(args.agreement_steps), "--reference", str(reference)]
    command += ["--lm-head-bf16"] if args.lm_head_bf16 else []
    print(f"[{time.strftime('%H:%M:%S')}] {precision}: {available_gb():.1f} GB available, "
          f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if done.returncode:
        why = "killed: out of memory?" if done.returncode == -9 else "see stderr"
        return {"precision": precision, "failed": f"exit status {done.returncode} ({why})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(results: dict) -> str:
    bandwidth = results["bandwidth"]["gb_s"]
    scale_note = "" if results["layers"] == FULL_LAYERS else f" (measured with {results['layers']} layers)"
    lines = [f"read bandwidth {bandwidth:.1f} GB/s; {results['layers']} layers{scale_note}", "",
             "| | bf16 | int8 |", "|---|---|---|"]
    runs = [results["runs"][p] for p in ("bf16", "int8") if "failed" not in results["runs"].get(p, {"failed": 1})]
    for precision, run in results["runs"].items():
        if "failed" in run:
            lines.insert(0, f"{precision}: FAILED, {run['failed']}")

    def row(name, values):
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("weight bytes read per token (GB)", [f"{r['bytes_per_token'] / GB:.2f}" for r in runs])
    row("bound (tok/s) = bandwidth ÷ bytes", [f"{bandwidth * GB / r['bytes_per_token']:.2f}" for r in runs])
    row("auricle decode (tok/s), two runs",
        [f"{r['auricle']['decode_tok_s']:.2f}, {r['auricle_again']['decode_tok_s']:.2f}" for r in runs])
    row("auricle decode ÷ bound",
        [f"{max(r['auricle']['decode_tok_s'], r['auricle_again']['decode_tok_s']) * r['bytes_per_token'] / (bandwidth * GB):.2f}"
         for r in runs])
    row("transformers generate decode (tok/s)", [f"{r['generate']['decode_tok_s']:.2f}" for r in runs])
    row("time to first token, 10 s clip (s)",
        [f"{r['auricle']['ttft_s']:.1f} (encoder {r['auricle']['encode_s']:.1f} + prefill {r['auricle']['prefill_s']:.1f})"
         for r in runs])
    row("10 s clip, 30 new tokens (s): TTFT + 29 ÷ decode",
        [f"{r['auricle']['ttft_s'] + 29 / max(r['auricle']['decode_tok_s'], r['auricle_again']['decode_tok_s']):.0f}"
         for r in runs])
    if results["layers"] != FULL_LAYERS:  # per-token time taken as proportional to bytes read; prefill to layers
        def decode_28(r):
            best = max(r["auricle"]["decode_tok_s"], r["auricle_again"]["decode_tok_s"])
            return best * r["bytes_per_token"] / r["bytes_per_token_28"]

        def ttft_28(r):
            return r["auricle"]["encode_s"] + r["auricle"]["prefill_s"] * FULL_LAYERS / results["layers"]

        row("SCALED to 28 layers: bytes per token (GB)", [f"{r['bytes_per_token_28'] / GB:.2f}" for r in runs])
        row("SCALED: bound (tok/s)", [f"{bandwidth * GB / r['bytes_per_token_28']:.2f}" for r in runs])
        row("SCALED: auricle decode (tok/s)", [f"{decode_28(r):.2f}" for r in runs])
        row("SCALED: transformers generate (tok/s)",
            [f"{r['generate']['decode_tok_s'] * r['bytes_per_token'] / r['bytes_per_token_28']:.2f}" for r in runs])
        row("SCALED: TTFT, 10 s clip (s)", [f"{ttft_28(r):.1f}" for r in runs])
        row("SCALED: 10 s clip, 30 new tokens (s)", [f"{ttft_28(r) + 29 / decode_28(r):.0f}" for r in runs])
        row("SCALED: decoder bytes (GB)", [f"{r['decoder_bytes_28'] / GB:.2f}" for r in runs])
    row("peak RSS (GB); after building", [f"{r['peak_rss_gb']:.1f}; {r['rss_after_load_gb']:.1f}" for r in runs])
    row("decoder bytes (GB)", [f"{r['decoder_bytes'] / GB:.2f}" for r in runs])
    if len(runs) == 2 and runs[1]["precision"] == "int8":
        speedup = max(runs[1]["auricle"]["decode_tok_s"], runs[1]["auricle_again"]["decode_tok_s"]) / \
            max(runs[0]["auricle"]["decode_tok_s"], runs[0]["auricle_again"]["decode_tok_s"])
        lines += ["", f"int8 decode ÷ bf16 decode: {speedup:.2f}"]
        if "agreement" in runs[1]:
            agreement = runs[1]["agreement"]
            lines.append(f"top-1 agreement int8 vs bf16 over {agreement['steps']} teacher-forced steps: "
                         f"{agreement['top1']:.3f} (max |logit diff| {agreement['max_abs_logit_diff']:.3f}, logit std "
                         f"{agreement['logit_std']:.3f}, median top-1 margin {agreement['median_top1_margin']:.3f})")
    inter = results.get("interleaved")
    if inter and "failed" not in inter:
        lines.append(f"interleaved in one process, {inter['rounds']} rounds of {inter['tokens']} tokens: int8/bf16 per round "
                     + ", ".join(f"{r:.2f}" for r in inter["int8_over_bf16"]) + f" (median {inter['median_ratio']:.2f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 28 if memory allows)")
    parser.add_argument("--new-tokens", type=int, default=5, help="tokens decoded per timed run")
    parser.add_argument("--agreement-steps", type=int, default=200)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "int8"], choices=["bf16", "int8"])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--lm-head-bf16", action="store_true",
                        help="an experiment: leave lm_head in bf16 in the int8 run (auricle quantises it)")
    parser.add_argument("--child", choices=["bf16", "int8", "interleaved"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=0,
                        help="also decode bf16 and int8 in alternation this many rounds, in one process "
                             "(the int8/bf16 ratio under the same load; needs both decoders in memory)")
    parser.add_argument("--reference", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "interleaved":
        return interleaved(args)
    if args.child:
        return child(args)

    import torch

    free = available_gb()
    if args.layers is None:  # bf16 peak: 0.44 GB a layer + 2.2 GB embeddings, lm_head + 1.3 GB encoder + ~1 GB;
        # 2.5 GB is left for the others on a shared machine
        args.layers = FULL_LAYERS if free >= 18.5 else max(1, min(FULL_LAYERS, int((free - 7) / 0.44)))
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "available_gb_at_start": free,
               "load_average_at_start": os.getloadavg()[0], "layers": args.layers,
               "new_tokens": args.new_tokens, "lm_head_bf16": args.lm_head_bf16}
    print(f"[{time.strftime('%H:%M:%S')}] {free:.1f} GB available: {args.layers} layers", file=sys.stderr, flush=True)
    results["bandwidth"] = read_bandwidth()
    results["kernels_ms"] = kernels()
    print(json.dumps(results["kernels_ms"], indent=1), file=sys.stderr, flush=True)
    results["runs"] = {}
    with tempfile.TemporaryDirectory() as folder:
        for precision in args.precisions:
            results["runs"][precision] = run_child(precision, args, Path(folder) / "bf16_logits.pt")
            print(json.dumps(results["runs"][precision]), file=sys.stderr, flush=True)
    if args.rounds:
        command = [sys.executable, __file__, "--child", "interleaved", "--layers", str(args.layers),
                   "--new-tokens", str(args.new_tokens), "--rounds", str(args.rounds)]
        print(f"[{time.strftime('%H:%M:%S')}] interleaved: {available_gb():.1f} GB available", file=sys.stderr, flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        results["interleaved"] = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                                  else {"failed": f"exit status {done.returncode}"})
    after = read_bandwidth()
    results["bandwidth_after"] = after
    results["bandwidth"]["gb_s"] = max(results["bandwidth"]["gb_s"], after["gb_s"])
    results["load_average_at_end"] = os.getloadavg()[0]
    table = summarise(results)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
