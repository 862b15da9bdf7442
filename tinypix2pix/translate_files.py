"""`tinypix2pix translate`: image files and folders in, one PNG per input and an index.html out.

Inputs are files, folders (recursive) or globs; outputs keep the relative path, names never
collide (a.png and a.jpg become a_png.png and a_jpg.png), inputs are never overwritten, every
file is written atomically, and unreadable inputs are listed (on stderr and on the page) and
skipped. Images of equal size are batched; how an image becomes the model's input (channels,
an optional task) is infer.py's.
"""
import html
import json
import zlib
from pathlib import Path

from . import checkpoint as ckpt
from .errors import UserError
from .imagefiles import IMAGE_EXTENSIONS, UnreadableImage, image_size, list_images, read_image
from .infer import resolve_task, translate_tensors


def collect_inputs(inputs, out_dir=None) -> list:
    """INPUT arguments (files, folders searched recursively, globs) -> [(path, relative name)].

    A folder's files keep their path relative to it, a glob's their path below its first
    wildcard-free folders. An output folder inside an input folder is not read back in.
    """
    import glob

    out = Path(out_dir).resolve() if out_dir else None

    def folder(p: Path) -> list:
        inside = out is not None and out != p.resolve() and out.is_relative_to(p.resolve())
        ours = (out / "index_files") if out is not None else None  # the page's own pictures

        def keep(f: Path) -> bool:
            r = f.resolve()
            return not ((inside and r.is_relative_to(out)) or (ours is not None and r.is_relative_to(ours)))

        return [(f, f.relative_to(p)) for f in list_images(p) if keep(f)]

    found = []
    for item in map(str, inputs):
        p = Path(item)
        if p.is_dir():
            found += folder(p)
        elif p.is_file():
            found.append((p, Path(p.name)))
        elif glob.has_magic(item):
            base = Path(*_parts_until_magic(item))  # "photos/**/*.jpg" -> photos
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"input {item!r} matches no files")
            for m in matches:
                if m.is_dir():
                    found += [(f, m.relative_to(base) / rel) for f, rel in folder(m)]
                elif m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append((m, m.relative_to(base)))
        else:
            raise UserError(f"input {item} does not exist")
    seen, unique = set(), []
    for f, rel in found:  # the same file given twice is translated once
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append((f, rel))
    return unique


def _parts_until_magic(pattern: str) -> list:
    import glob

    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return parts or ["."]


def output_names(rels) -> list:
    """Relative output names `<dir>/<stem>.png`, unique (case-insensitively): inputs that would
    share one (a.png, a.jpg) all keep their extension instead (a_png.png, a_jpg.png)."""
    def plain(rel):
        return rel.parent / f"{rel.stem}.png"

    count = {}
    for rel in rels:
        key = str(plain(rel)).lower()
        count[key] = count.get(key, 0) + 1
    taken, names = set(), []
    for rel in rels:
        name = plain(rel)
        if count[str(name).lower()] > 1:
            name = rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower() or 'img'}.png"
        stem, n = name.stem, 2
        while str(name).lower() in taken:
            name = name.parent / f"{stem}_{n}.png"
            n += 1
        taken.add(str(name).lower())
        names.append(name)
    return names


def translate_files(model, inputs, out_dir, task=None, task_args=None, batch_size: int = 16, seed: int = 0,
                    log=print) -> dict:
    """Translate image files into `out_dir` (one PNG per input, same relative path) and write
    `index.html`. Returns {"written": [paths], "skipped": [(path, reason)], "html": path}."""
    from .images import save_png, visible

    out_dir = Path(out_dir)
    task = resolve_task(model, task, task_args)
    files = collect_inputs(inputs, out_dir)
    if not files:
        raise UserError(f"no image files found in {', '.join(map(str, inputs))}")
    names = output_names([rel for _, rel in files])
    sources = {f.resolve() for f, _ in files}
    for (f, _), name in zip(files, names):
        for target in (out_dir / name, out_dir / "index.html", out_dir / "index_files" / "input" / name,
                       out_dir / "index_files" / "target" / name):
            if target.resolve() in sources:
                raise UserError(f"writing {target} would overwrite the input {f}; choose another --out")
    try:
        ckpt.check_writable(out_dir)
    except UserError:
        raise UserError(f"cannot write to --out {out_dir}") from None

    skipped, sizes = [], {}
    for i, (f, _) in enumerate(files):  # headers only: group by size without decoding everything
        try:
            w, h, _, _ = image_size(f)
            sizes.setdefault((h, w), []).append(i)
        except UnreadableImage as e:
            skipped.append((f, e.reason))
    rows, device = {}, next(model.parameters()).device
    for idx in sizes.values():
        for start in range(0, len(idx), batch_size):
            batch, ok = [], []
            for i in idx[start:start + batch_size]:
                try:
                    batch.append(read_image(files[i][0]).to(device).float() / 255)
                    ok.append(i)
                except UnreadableImage as e:
                    skipped.append((files[i][0], e.reason))
            if not ok:
                continue
            # seeds from the file's name, so its corruption does not depend on what else is translated
            seeds = [seed + zlib.crc32(str(files[i][1]).encode()) for i in ok]
            for i, (out, a, b) in zip(ok, translate_tensors(model, batch, task, seeds, batch_size)):
                name = names[i]
                save_png((out + 1) / 2, out_dir / name)
                save_png((visible(a[None])[0] + 1) / 2, out_dir / "index_files" / "input" / name)
                if b is not None:
                    save_png((b + 1) / 2, out_dir / "index_files" / "target" / name)
                rows[i] = (files[i][0], name, out.shape[-1], out.shape[-2], b is not None)
    ordered = [rows[i] for i in sorted(rows)]
    page = write_html(out_dir, ordered, skipped, model, task)
    for f, reason in skipped:
        log(f"skipped {f}: {reason}")
    return {"written": [out_dir / r[1] for r in ordered], "skipped": skipped, "html": page}


def _url(rel: Path) -> str:
    from urllib.parse import quote

    return "/".join(quote(part) for part in Path(rel).parts)


def write_html(out_dir: Path, rows, skipped, model, task) -> Path:
    """index.html beside the outputs: input | output (| target) per image, relative links."""
    info = getattr(model, "info", {})
    e = lambda s: html.escape(str(s), quote=True)
    head = ["input (what the model saw)", "output"] + (["target"] if any(r[4] for r in rows) else [])
    task_text = "none (the images are the model's inputs)" if task is None else task.name
    lines = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>tinypix2pix translate</title>',
             "<style>body{font-family:sans-serif;margin:1em}td,th{padding:4px 8px;vertical-align:top;text-align:left}"
             "img{image-rendering:pixelated;border:1px solid #ccc}td.name{font-family:monospace;font-size:90%}</style>",
             "</head><body>", "<h1>tinypix2pix translate</h1>",
             f"<p>checkpoint: <code>{e(info.get('checkpoint', '?'))}</code> ({e(info.get('source', ''))}); "
             f"trained task: {e(info.get('task', '?'))}; task applied here: {e(task_text)}; "
             f"generator: {e(json.dumps(info.get('generator', {}), sort_keys=True))}</p>",
             f"<p>{len(rows)} image(s) translated, {len(skipped)} skipped.</p>",
             "<table><tr><th>file</th>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for src, name, w, h, has_target in rows:
        scale = max(1, min(8, 128 // max(w, h)))  # enlarge small images so a 32 px one is visible
        size = f'width="{w * scale}" height="{h * scale}"'
        cells = [f"index_files/input/{_url(name)}", _url(name)] + ([f"index_files/target/{_url(name)}"] if has_target else [])
        lines.append(f'<tr><td class="name">{e(src)}<br>{w}x{h}</td>' +
                     "".join(f'<td><img src="{e(c)}" {size} alt="{e(name)}"></td>' for c in cells) + "</tr>")
    lines.append("</table>")
    if skipped:
        lines.append("<h2>Skipped</h2><ul>" + "".join(f"<li><code>{e(f)}</code>: {e(r)}</li>" for f, r in skipped) + "</ul>")
    lines.append("</body></html>")
    page = out_dir / "index.html"
    ckpt.atomic_write(page, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return page
