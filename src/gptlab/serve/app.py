"""`gptlab serve`: the JSON API and the page, as one ASGI app (Starlette).

Every request that computes is a POST whose JSON body uses the command line's option names
(FIELDS); a wrong type or value is a 422 with a one-line reason. The model is fixed when the
app is made: no request names a file or a path. Generation streams server-sent events, at most
`max_generations` at once (more get 429), and stops when the client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gptlab.errors import GptlabError
from gptlab.generate import check_sampling, start_ids, stream
from gptlab.model.fast import describe_decoding
from gptlab.serve import analysis
from gptlab.serve.analysis import Lab
from gptlab.train.metrics import read_losses

STATIC = Path(__file__).parent / "static"
# The concepts guide, shipped with the package (links to docs/ in the repository, copied into
# the wheel), so that the page's § links work from an installed gptlab too.
GUIDE = Path(__file__).parent / "guide"
GUIDES = ("concepts.md", "concepts.zh-CN.md")
THUMB = 48  # cells per side of a grid thumbnail
LENS = 48  # positions of the logit lens per request

# name -> (JSON type, default, description). The one list the validator, the OpenAPI schema and
# the page share.
FIELDS: dict[str, tuple[str, Any, str]] = {
    "prompt": ("string", "", "the text (default: start afresh, as gptlab sample does)"),
    "model": ("integer", 0, "0 = MODEL, 1 = the --compare model"),
    "max_new_tokens": ("integer", 64, "tokens to generate, at most the model's block_size"),
    "temperature": ("number", 0.8, "0 = greedy"),
    "top_k": ("integer", None, "sample from the k likeliest tokens"),
    "top_p": ("number", None, "sample from the smallest set holding mass p"),
    "seed": ("integer", 1337, "random seed of the sampler"),
    "layer": ("integer", 0, "a layer, from 0"),
    "head": ("integer", None, "a head, from 0 (attention: all heads if absent)"),
    "position": ("integer", None, "a position in the text (default: the last)"),
    "thumb": ("boolean", False, "attention: small thumbnails (at most 48 x 48) of every head"),
    "ablate": ("array", [], "heads to switch off, as [layer, head] pairs"),
    "ids": ("array", [], "token ids"),
    "start": (
        "boolean",
        False,
        "the text begins with the start token (as a generation from an empty prompt did)",
    ),
    "step": ("integer", None, "a snapshot of the model's run (default: its final weights)"),
    "token": ("integer", None, "a token id (embeddings: default the text's last token)"),
    "norm": ("string", "ln_1", "residual: block `layer`'s ln_1 or ln_2 (layer = n_layer: ln_f)"),
}
TEXT = ["prompt", "model", "step", "start"]  # the text a view is about, and which model
SAMPLING = ["temperature", "top_k", "top_p"]
ENDPOINTS: dict[str, tuple[str, list[str]]] = {
    "/api/tokenize": ("the text's tokens", ["prompt", "model", "start"]),
    "/api/next": ("the next-token table", [*TEXT, *SAMPLING, "position", "ablate"]),
    "/api/generate": (
        "generated tokens as server-sent events",
        ["prompt", "model", "step", "max_new_tokens", *SAMPLING, "seed"],
    ),
    "/api/attention": ("one layer's attention weights", [*TEXT, "layer", "head", "thumb"]),
    "/api/lens": ("the logit lens, at most 48 positions around `position`", [*TEXT, "position"]),
    "/api/heads": ("per-head diagnostics", TEXT),
    "/api/model": ("the model's tensors and sizes", ["model"]),
    "/api/decode": (
        "the text of token ids, and whether it ends on a whole character",
        ["ids", "model"],
    ),
    "/api/steps": (
        "one head, step by step, for one query position (float32)",
        [*TEXT, "layer", "head", "position"],
    ),
    "/api/embeddings": (
        "a token's nearest tokens, a PCA of the vocabulary, position similarity (float32)",
        [*TEXT, "token"],
    ),
    "/api/residual": (
        "the residual stream's norms and one LayerNorm taken apart (float32; layer = "
        "n_layer: ln_f)",
        [*TEXT, "layer", "position", "norm"],
    ),
    "/api/snapshots": ("the saved steps of the model's run, with its losses", ["model"]),
}


def _f32(t: torch.Tensor) -> dict:
    """A float32 tensor for JSON: its shape and its bytes, little-endian, base64."""
    data = t.detach().float().contiguous().cpu().numpy().astype("<f4").tobytes()
    return {"shape": list(t.shape), "f32": base64.b64encode(data).decode("ascii")}


def guide_html(markdown: str, lang: str) -> str:
    """The guide's Markdown as a readable page: the text as it is (wrapped, escaped), each
    numbered section a heading with the number as its anchor (#13), no renderer needed."""
    import html
    import re

    out = []
    for line in markdown.splitlines():
        numbered = re.match(r"## (\d+)\. ", line)
        picture = re.fullmatch(r"!\[([^\]]*)\]\(([^)]*)\)", line.strip())
        if picture:  # a screenshot of the page: the page itself is one tab away
            alt, path = (html.escape(g) for g in picture.groups())
            out.append(f"<div><i>[{alt}: {path}]</i></div>")
        elif numbered:
            out.append(f'<h2 id="{numbered.group(1)}">{html.escape(line[3:])}</h2>')
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 3)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        else:
            out.append(f"<div>{html.escape(line) or '&nbsp;'}</div>")
    body = "\n".join(out)
    style = (
        "body{font:15px/1.5 system-ui,sans-serif;max-width:52em;margin:1em auto;padding:0 1em}"
        "div{white-space:pre-wrap;overflow-wrap:anywhere;font-family:inherit}"
        "h2{margin-top:1.6em;border-top:1px solid #ddd;padding-top:.6em}"
    )
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>gptlab concepts</title><style>{style}</style></head><body>{body}</body></html>"
    )


def _window_start(lab: Lab, ids: list[int]) -> int:
    """The first of the text's tokens the model reads: it reads the last block_size."""
    return max(0, len(ids) - lab.model.config.block_size)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _typed(name: str, value: Any) -> Any:
    kind = FIELDS[name][0]
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
    }[kind]
    if value is None and FIELDS[name][1] is None:
        return None
    if not ok:
        raise BadRequest(f"{name} must be a{'n' if kind[0] in 'aei' else ''} {kind}")
    if kind == "number":
        try:
            return float(value)
        except OverflowError:  # an integer of 400 digits
            raise BadRequest(f"{name} must be a finite number") from None
    return value


async def _body(request: Request, allowed: list[str]) -> dict[str, Any]:
    """The JSON body, checked: known fields of the right type, defaults filled in."""
    try:
        raw = await request.json() if await request.body() else {}
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(raw, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (fields: {', '.join(allowed)})")
    return {name: _typed(name, raw.get(name, FIELDS[name][1])) for name in allowed}


class Server:
    """The models and the limits; `app()` makes the ASGI app."""

    def __init__(self, labs: list[Lab], max_generations: int = 2) -> None:
        self.labs = labs
        self.max_generations = max_generations
        self.running = 0
        self._count = threading.Lock()

    # ------------------------------------------------------------------ helpers

    async def lab(self, body: dict) -> Lab:
        """The model a request names, at its snapshot `step` where one is given (loaded in a
        worker thread: the server goes on answering meanwhile)."""
        i = body.get("model", 0)
        if not 0 <= i < len(self.labs):
            raise BadRequest(f"model must be in [0, {len(self.labs) - 1}], got {i}")
        if body.get("step") is None:
            return self.labs[i]
        try:
            return await asyncio.to_thread(self.labs[i].at, body["step"])
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None

    def ids(self, lab: Lab, body: dict) -> list[int]:
        """The prompt's ids as generation reads them: its last block_size (as gptlab sample
        reads a longer prompt)."""
        try:
            ids = start_ids(lab.tokenizer, body["prompt"])
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None
        return ids[-lab.model.config.block_size :]

    def text_ids(self, lab: Lab, body: dict) -> list[int]:
        """The text's ids, as a generation saw them: the prompt's (the start token for none),
        after the start token where `start` says the text began from an empty prompt."""
        try:
            if body.get("start"):
                prompt = body["prompt"]
                return start_ids(lab.tokenizer, "") + (
                    lab.tokenizer.encode(prompt) if prompt else []
                )
            return start_ids(lab.tokenizer, body["prompt"])
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None

    def window(self, lab: Lab, body: dict) -> tuple[list[int], int]:
        """The ids the model reads of the text: its last block_size tokens, as sampling does
        -> (those ids, the index of the first in the whole text)."""
        ids = self.text_ids(lab, body)
        offset = _window_start(lab, ids)
        return ids[offset:], offset

    def position(self, body: dict, ids: list[int], offset: int) -> int | None:
        """body's position (an index in the whole text) -> an index in the window."""
        p = body["position"]
        if p is None:
            return None
        if not offset <= p < offset + len(ids):
            why = f" (the model reads the text's last {len(ids)} tokens)" if offset else ""
            raise BadRequest(
                f"position must be in [{offset}, {offset + len(ids) - 1}], got {p}{why}", 400
            )
        return p - offset

    # ------------------------------------------------------------------ endpoints

    async def info(self, request: Request) -> Response:
        import dataclasses

        return JSONResponse(
            {
                "models": [
                    {
                        "name": lab.name,
                        **dataclasses.asdict(lab.model.config),
                        "parameters": analysis.parameters(lab),
                        "quantized": analysis.quantized(lab),
                        "tokenizer": lab.tokenizer.kind,
                        # what the model computes in (analysis views compute in float32)
                        "dtype": str(lab.model.transformer.wte.weight.dtype).removeprefix("torch."),
                        # what generation multiplies with (gptlab.model.fast)
                        "decoding": describe_decoding(lab.model),
                    }
                    for lab in self.labs
                ],
                "fields": {
                    k: {"type": t, "default": d, "description": s}
                    for k, (t, d, s) in FIELDS.items()
                },
            }
        )

    async def tokenize(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids = self.text_ids(lab, body)
        return {"tokens": analysis.tokens(lab, ids), "window_start": _window_start(lab, ids)}

    async def next(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids, offset = self.window(lab, body)
        self._sampling(body)
        position = self.position(body, ids, offset)
        heads = self._heads(lab, body["ablate"])
        table = await asyncio.to_thread(
            analysis.next_tokens,
            lab,
            ids,
            body["temperature"],
            body["top_k"],
            body["top_p"],
            position,
            heads,
        )
        table.pop("logits")
        return {**table, "position": table["position"] + offset, "offset": offset}

    async def attention(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids, offset = self.window(lab, body)
        try:
            analysis.check_layer(lab, body["layer"])
            if body["head"] is not None:
                analysis.check_head(lab, body["head"])
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None
        maps = await asyncio.to_thread(analysis.attention, lab, ids, body["layer"])
        if body["head"] is not None:
            maps = maps[body["head"] : body["head"] + 1]
        if body["thumb"]:
            maps = analysis.shrink(maps, THUMB)
        data = maps.contiguous().numpy().astype("<f4").tobytes()
        return {
            "layer": body["layer"],
            "heads": [body["head"]] if body["head"] is not None else list(range(maps.size(0))),
            "shape": list(maps.shape),
            "tokens": len(ids),
            "offset": offset,
            "weights_f32": base64.b64encode(data).decode("ascii"),
        }

    async def lens(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids, offset = self.window(lab, body)
        position = self.position(body, ids, offset)
        at = len(ids) - 1 if position is None else position
        first = max(0, min(at - LENS // 2, len(ids) - LENS))
        rows = await asyncio.to_thread(analysis.logit_lens, lab, ids, first, first + LENS)
        return {"rows": rows, "offset": offset, "first": first + offset}

    async def heads(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids, offset = self.window(lab, body)
        try:
            heads = await asyncio.to_thread(analysis.head_scores, lab, ids)
            return {"heads": heads, "offset": offset}
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None

    async def decode(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids = body["ids"]
        vocab = lab.model.config.vocab_size
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
            raise BadRequest(f"ids must be token ids in [0, {vocab - 1}]", 400)
        text, whole = lab.decode(ids)
        return {"text": text, "whole": whole}

    async def model_parts(self, request: Request, body: dict) -> Any:
        return analysis.model_parts(await self.lab(body))

    async def steps(self, request: Request, body: dict) -> Any:
        """Each step as {"shape", "f32"} (little-endian float32, base64; -inf where masked)."""
        lab = await self.lab(body)
        ids, offset = self.window(lab, body)
        position = self.position(body, ids, offset)
        position = len(ids) - 1 if position is None else position
        head = 0 if body["head"] is None else body["head"]
        try:
            steps = await asyncio.to_thread(
                analysis.head_steps, lab, ids, body["layer"], head, position
            )
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None
        return {
            "layer": body["layer"],
            "head": head,
            "position": position + offset,
            "offset": offset,
            "tokens": analysis.tokens(lab, ids),
            "steps": {name: _f32(t) for name, t in steps.items()},
        }

    async def embeddings(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids, _ = self.window(lab, body)
        token = ids[-1] if body["token"] is None else body["token"]
        try:
            found = await asyncio.to_thread(analysis.embeddings, lab, token, ids)
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None
        for name in ("wpe", "wpe_similarity", "sinusoid_similarity"):
            found[name] = _f32(found[name])
        return found

    async def residual(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        ids, offset = self.window(lab, body)
        position = self.position(body, ids, offset)
        position = len(ids) - 1 if position is None else position
        try:
            found = await asyncio.to_thread(
                analysis.residual, lab, ids, body["layer"], position, body["norm"]
            )
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None
        arrays = {k: _f32(v) for k, v in found.items() if isinstance(v, torch.Tensor)}
        numbers = {k: v for k, v in found.items() if not isinstance(v, torch.Tensor)}
        return {
            "layer": body["layer"],
            "position": position + offset,
            "offset": offset,
            **numbers,
            **arrays,
        }

    async def snapshots(self, request: Request, body: dict) -> Any:
        lab = await self.lab(body)
        losses = await asyncio.to_thread(read_losses, Path(lab.name)) if lab.snapshots else []
        by_step = {row["step"]: row for row in losses}
        return {
            "steps": [
                {
                    "step": step,
                    **{k: by_step.get(step, {}).get(k) for k in ("train_loss", "val_loss")},
                }
                for step in lab.snapshots
            ],
            "losses": losses,
        }

    async def generate(self, request: Request, body: dict) -> Response:
        lab = await self.lab(body)
        ids = self.ids(lab, body)
        self._sampling(body)
        block = lab.model.config.block_size
        n = body["max_new_tokens"]
        if not 0 <= n <= block:
            raise BadRequest(f"max_new_tokens must be in [0, {block}], got {n}", 400)
        if not 0 <= body["seed"] < 2**63:  # as gptlab sample (torch's seeds are 64-bit)
            raise BadRequest(f"seed must be in [0, 2**63), got {body['seed']}", 400)
        with self._count:
            if self.running >= self.max_generations:
                raise BadRequest(
                    f"busy: {self.running} generations are running; try again shortly", 429
                )
            self.running += 1
        released = threading.Event()

        def release() -> None:  # once, whether the stream ended, failed or never started
            with self._count:
                if not released.is_set():
                    released.set()
                    self.running -= 1

        return StreamingResponse(
            self._events(request, lab, ids, body, release),
            media_type="text/event-stream",
            background=BackgroundTask(release),
        )

    async def _events(self, request: Request, lab: Lab, ids: list[int], body: dict, release):
        """One event per token: {"id", "text"}, then {"done": true}. As `gptlab sample`:
        the same generator, seed and decoder, so the same text for the same settings."""
        try:
            generator = torch.Generator(device=lab.device).manual_seed(body["seed"])
            idx = lab.tensor(ids)
            tokens = stream(
                lab.model,
                idx,
                body["max_new_tokens"],
                body["temperature"],
                body["top_k"],
                body["top_p"],
                eos_id=lab.tokenizer.eot_id,
                generator=generator,
            )
            decoder = lab.tokenizer.decoder()

            def step():
                with lab.lock:
                    return next(tokens, None)

            while True:
                if await request.is_disconnected():
                    break  # the client left: stop computing
                nxt = await asyncio.to_thread(step)
                if nxt is None:
                    break
                token = int(nxt[0])
                if token == lab.tokenizer.eot_id:
                    break
                event = {"id": token, "text": decoder.step([token])}
                yield f"data: {json.dumps(event)}\n\n"
            tail = decoder.flush()
            yield f"data: {json.dumps({'done': True, 'text': tail})}\n\n"
        finally:
            release()

    async def guide(self, request: Request) -> Response:
        """The concepts guide as a page the § links open at their section (/guide/NAME#13)."""
        name = request.path_params["name"]
        if name not in GUIDES or not (GUIDE / name).is_file():
            return JSONResponse({"error": f"no guide {name!r}"}, status_code=404)
        text = (GUIDE / name).read_text(encoding="utf-8")
        return HTMLResponse(guide_html(text, "zh-CN" if "zh" in name else "en"))

    # ------------------------------------------------------------------ plumbing

    def _sampling(self, body: dict) -> None:
        try:
            check_sampling(body["temperature"], body["top_k"], body["top_p"])
        except GptlabError as e:
            raise BadRequest(str(e), 400) from None

    def _heads(self, lab: Lab, pairs: list) -> list[tuple[int, int]]:
        heads = []
        for pair in pairs:
            whole = isinstance(pair, list) and len(pair) == 2
            if not whole or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
                raise BadRequest("ablate must be a list of [layer, head] pairs")
            try:
                analysis.check_layer(lab, pair[0])
                analysis.check_head(lab, pair[1])
            except GptlabError as e:
                raise BadRequest(str(e), 400) from None
            heads.append((pair[0], pair[1]))
        return heads

    def _endpoint(self, method, allowed: list[str]):
        async def handle(request: Request) -> Response:
            try:
                body = await _body(request, allowed)
                result = await method(request, body)
            except BadRequest as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            return result if isinstance(result, Response) else JSONResponse(result)

        return handle

    def openapi(self) -> dict:
        def schema(names):
            return {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    n: {
                        "type": FIELDS[n][0],
                        "description": FIELDS[n][2],
                        **({"default": FIELDS[n][1]} if FIELDS[n][1] is not None else {}),
                    }
                    for n in names
                },
            }

        paths = {
            path: {
                "post": {
                    "summary": summary,
                    "requestBody": {"content": {"application/json": {"schema": schema(names)}}},
                    "responses": {
                        "200": {"description": summary},
                        "400": {"description": 'a value out of range: {"error": ...}'},
                        "422": {"description": 'a wrong field or type: {"error": ...}'},
                    },
                }
            }
            for path, (summary, names) in ENDPOINTS.items()
        }
        paths["/api/info"] = {
            "get": {
                "summary": "the models and the request fields",
                "responses": {"200": {"description": "info"}},
            }
        }
        from gptlab import __version__

        return {
            "openapi": "3.1.0",
            "info": {"title": "gptlab serve", "version": __version__},
            "paths": paths,
        }

    def app(self) -> Starlette:
        methods = {
            "/api/tokenize": self.tokenize,
            "/api/next": self.next,
            "/api/generate": self.generate,
            "/api/attention": self.attention,
            "/api/lens": self.lens,
            "/api/heads": self.heads,
            "/api/model": self.model_parts,
            "/api/decode": self.decode,
            "/api/steps": self.steps,
            "/api/embeddings": self.embeddings,
            "/api/residual": self.residual,
            "/api/snapshots": self.snapshots,
        }
        routes = [
            Route("/", lambda request: FileResponse(STATIC / "index.html")),
            Route("/api/info", self.info),
            Route("/openapi.json", lambda request: JSONResponse(self.openapi())),
            *[
                Route(path, self._endpoint(methods[path], names), methods=["POST"])
                for path, (_, names) in ENDPOINTS.items()
            ],
            Route("/guide/{name}", self.guide),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        return Starlette(routes=routes)


def load_lab(name: str, device: str = "auto", dtype: str = "auto", quantize: str = "none") -> Lab:
    """A model and its tokenizer, as `gptlab sample` loads them (`gptlab.model.load`)."""
    from gptlab.model.load import load_for_inference
    from gptlab.train.checkpoint import snapshots

    model, tok = load_for_inference(name, device, dtype, quantize)
    return Lab(model, tok, name, snapshots=snapshots(Path(name)) if Path(name).is_dir() else {})


class Background:
    """The app served on a free loopback port from a thread, for a with-block (notebooks,
    tests, screenshots): `with Background(labs) as url: ...`."""

    def __init__(self, labs: list[Lab], max_generations: int = 2) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.api = Server(labs, max_generations)
        config = uvicorn.Config(
            self.api.app(), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise GptlabError(f"the server did not start on port {self.port}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
