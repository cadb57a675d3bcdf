"""`agentkv generate`: stream one completion from a model and print tokens/s."""
from __future__ import annotations

import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt and stream it")
    p.add_argument("--model", default="tiny", help='a Hugging Face model folder, or "tiny"')
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")


def run(args) -> int:
    from runtime import Engine, EngineConfig, InvalidRequestError, SamplingParams
    from runtime.engine_thread import EngineThread
    from runtime.tokenizer import IncrementalDetokenizer

    engine = Engine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype))
    tok = engine.tokenizer
    if tok is None:
        print("this model folder has no tokenizer; agentkv generate needs one", file=sys.stderr)
        return 2
    if args.chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": args.prompt}])
    else:
        prompt = tok.encode(args.prompt)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    loop = EngineThread(engine).start()
    t0 = time.perf_counter()
    first = None
    n = 0
    detok = IncrementalDetokenizer(tok, prompt)
    try:
        for out in loop.submit(prompt, params, request_id="cli"):
            if out.new_token_ids and first is None:
                first = time.perf_counter()
            n += len(out.new_token_ids)
            sys.stdout.write(detok.push(out.new_token_ids))
            sys.stdout.flush()
            if out.finished:
                sys.stdout.write(detok.flush())
                reason = out.finish_reason.value if out.finish_reason else "?"
    except InvalidRequestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        loop.shutdown()
    t1 = time.perf_counter()
    decode_s = t1 - (first or t1)
    rate = (n - 1) / decode_s if n > 1 and decode_s > 0 else float("nan")
    print(f"\n[{n} tokens, finish={reason}, time to first token {((first or t1) - t0) * 1e3:.1f} ms,"
          f" {rate:.1f} tokens/s]", file=sys.stderr)
    return 0
