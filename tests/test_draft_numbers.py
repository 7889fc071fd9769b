"""Numbers that move together, on key lists alone (no files): offsets, numberings of another
depth, and a property: whatever the renaming, every pair the draft makes is right."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from mapspec.tools.draft import draft
from mapspec.compile.plan import TensorInfo


def infos(shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorInfo]:
    """Sorted by name, as a safetensors header lists them: the order carries nothing."""
    return {k: TensorInfo(shapes[k], "float32") for k in sorted(shapes)}


def test_two_offsets_one_per_number():
    """`stage{s}.unit{u}` (both from 1) -> `layer{s-1}.{u-1}`, every conv the same shape."""
    src = {f"stage{s}.unit{u}.conv.weight": (8, 8, 3, 3) for s in (1, 2, 3) for u in (1, 2, 3)}
    tgt = {f"layer{s - 1}.{u - 1}.conv.weight": shape for (s, u), shape in
           (((int(k[5]), int(k[11])), v) for k, v in src.items())}
    d = draft(infos(src), infos(tgt))
    assert d.ok
    assert d.pairing.mapping() == {f"layer{s - 1}.{u - 1}.conv.weight": (f"stage{s}.unit{u}.conv.weight",)
                                   for s in (1, 2, 3) for u in (1, 2, 3)}
    assert "stage{i:int}.unit{j:int}.conv.weight -> layer{i-1}.{j-1}.conv.weight" in d.text


def test_flat_numbers_into_stages_of_unequal_counts():
    """Flat `blocks.N` -> `stages.S.blocks.B` with 2, 3 and 1 blocks per stage, read from the
    target's keys; widths differ per stage, so every link is also checked by shape."""
    counts, src, tgt, truth = (2, 3, 1), {}, {}, {}
    n = 0
    for s, c in enumerate(counts):
        for b in range(c):
            for m, shape in (("proj", (4 * (s + 1), 4 * (s + 1))), ("norm", (4 * (s + 1),))):
                src[f"blocks.{n}.{m}.weight"] = shape
                tgt[f"stages.{s}.blocks.{b}.{m}.weight"] = shape
                truth[f"stages.{s}.blocks.{b}.{m}.weight"] = (f"blocks.{n}.{m}.weight",)
            n += 1
    d = draft(infos(src), infos(tgt))
    assert d.ok and d.pairing.mapping() == truth
    assert len(d.rules) == 1


NAMES = st.sampled_from(["proj", "fc", "mix", "gate", "norm", "attn", "conv"])


@st.composite
def renamings(draw):
    """A source checkpoint of numbered blocks and a renamed target: another prefix, a stage
    offset, optionally nested into stages, module names kept, renamed consistently or
    replaced by unrelated ones; some modules share shapes; unnumbered tensors beside them."""
    n_blocks = draw(st.integers(1, 6))
    modules = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    shapes = {m: draw(st.sampled_from([(4, 4), (4, 8), (8,), (4,)])) for m in modules}
    offset = draw(st.integers(-1, 2))
    nested = draw(st.integers(0, 1)) and n_blocks > 1
    rename = draw(st.sampled_from(["keep", "suffix", "unrelated"]))
    first = draw(st.integers(0, 1))       # the source counts from 0 or 1
    offset = max(offset, -first)          # target numbers stay >= 0
    src, tgt, truth = {}, {}, {}
    per = max(1, n_blocks // 2)
    for i in range(n_blocks):
        n = i + first
        where = f"stages.{i // per}.blocks.{i % per}" if nested else f"layers.{n + offset}"
        for j, m in enumerate(modules):
            tm = {"keep": m, "suffix": m + "_x", "unrelated": f"op{'abcd'[j]}"}[rename]
            s_key, t_key = f"blocks.{n}.{m}.weight", f"{where}.{tm}.weight"
            src[s_key], tgt[t_key] = shapes[m], shapes[m]
            truth[t_key] = (s_key,)
    for name in draw(st.lists(st.sampled_from(["embed", "head", "final_norm"]), max_size=2, unique=True)):
        shape = draw(st.sampled_from([(4, 4), (4, 8), (8,), (6, 4)]))
        t_key = {"keep": f"stem.{name}.weight", "suffix": f"{name}_x.weight", "unrelated": f"z{len(name)}.weight"}[rename]
        src[f"{name}.weight"], tgt[t_key] = shape, shape
        truth[t_key] = (f"{name}.weight",)
    return src, tgt, truth


@settings(max_examples=60, deadline=None)
@given(renamings())
def test_every_pair_the_draft_makes_is_right(case):
    src, tgt, truth = case
    d = draft(infos(src), infos(tgt))
    got = d.pairing.mapping()
    wrong = {t: (s, truth[t]) for t, s in got.items() if truth.get(t) != s}
    assert not wrong, (wrong, d.text)
    # whatever is not paired is said to be open, never silently missing
    assert set(truth) - set(got) == {k for k in (line.split(": ", 1)[1].rsplit(" ", 2)[0]
                                                 for line in d.problems)}
