"""Record checks shared by ``jax-align data validate`` and training (issue 4, item 8).

A record is checked in order: decodable JSON, the format adapter (missing field, wrong type, empty response,
chosen identical to rejected, fewer than two distinct ranked responses, image/placeholder mismatch), every
image opened and decoded (missing file, corrupt bytes), and, when a tokenizer and ``max_length`` are given,
tokenization and truncation (too long even after truncation). Later stages run only when earlier ones pass,
so one fault is reported once, not again as its consequences.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from PIL import Image

from jax_align.data.images import ImageLimits, ImageLoadError, load_image
from jax_align.data.problems import Problem, merge_record_problems
from jax_align.data.readers import RawRecord, RecordSource
from jax_align.data.records import (
    Example,
    FieldProblems,
    PreferenceGroup,
    SFTExample,
    parse_images,
    parse_record,
)
from jax_align.data.tokenize import ChatTokenizer, TemplateError, TokenizedGroup, TooLongError, truncate_group


@dataclass
class CheckResult:
    raw: RawRecord
    example: Example | None = None
    images: list[Image.Image] = field(default_factory=list)
    tokens: TokenizedGroup | None = None  # truncated to max_length when a tokenizer was given
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RecordChecker:
    """Checks records of one format.

    ``tokenizer`` + ``max_length`` enable the length check (and give the pipeline its tokens); ``layout``
    decides what one row must hold (``prefix_shared``: prefix + all responses; ``naive``: prefix + the
    longest).
    ``require_images``: None = required for preference formats, optional for SFT.
    """

    fmt: str
    require_images: bool | None = None
    tokenizer: ChatTokenizer | None = None
    max_length: int | None = None
    layout: str = "prefix_shared"
    min_response_tokens: int = 1
    max_prompt_cut: float = 0.5
    max_images: int | None = None
    max_responses: int | None = None
    critique_prompt: bool = False  # rewrite preference groups into MM-RLHF critic conversations (spec 4.2)
    allow_absolute_paths: bool = False  # image paths must resolve inside the data directory unless True
    image_limits: ImageLimits | None = None  # decode limits (default: ImageLimits.default())
    image_cache_size: int = 256
    _image_status: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def check(self, raw: RawRecord, path: str, base_dir: str, *, keep_images: bool = False) -> CheckResult:
        result = CheckResult(raw)

        def add(field_name: str, message: str) -> None:
            result.problems.append(Problem(path, raw.number, field_name, message))

        if raw.error is not None:
            add("record", raw.error)
            return result
        example, problems = parse_record(
            raw.data, self.fmt, base_dir=base_dir, require_images=self.require_images,
            allow_absolute_paths=self.allow_absolute_paths,
        )
        for field_name, message in problems:
            add(field_name, message)
        if example is None:
            # validation also reports unreadable images of a record with other faults (one problem each);
            # training (keep_images) only needs the first problem and must not share the memo across threads
            if not keep_images and isinstance(raw.data, Mapping):
                refs, _ = parse_images(raw.data, base_dir, FieldProblems(), self.allow_absolute_paths)
                for ref in refs:
                    try:
                        self._check_image(ref)
                    except ImageLoadError as e:
                        add(ref.field, str(e))
            return result
        if self.critique_prompt:
            if not isinstance(example, PreferenceGroup):
                add("record", "critique reward data must be preference records (pairwise or scored)")
                return result
            from jax_align.data.critique import critique_group

            example = critique_group(example)
        if self.max_images is not None and len(example.images) > self.max_images:
            add(
                example.images[self.max_images].field,
                f"{len(example.images)} images; at most {self.max_images} per record",
            )
        if (
            self.max_responses is not None
            and isinstance(example, PreferenceGroup)
            and example.num_responses > self.max_responses
        ):
            add(
                example.response_fields[-1],
                f"{example.num_responses} responses; at most {self.max_responses}",
            )
        for ref in example.images:
            try:
                if keep_images:
                    result.images.append(load_image(ref, self.image_limits))
                else:
                    self._check_image(ref)
            except ImageLoadError as e:
                add(ref.field, str(e))
        if result.problems:
            return result
        result.example = example
        if self.tokenizer is not None:
            text_field = example.text_field if isinstance(example, SFTExample) else example.prompt_field
            try:
                tokens = self.tokenizer.tokenize(example)
                if self.max_length is not None:
                    layout = "naive" if isinstance(example, SFTExample) else self.layout
                    tokens = truncate_group(
                        tokens,
                        self.max_length,
                        layout,
                        min_response_tokens=self.min_response_tokens,
                        max_prompt_cut=self.max_prompt_cut,
                    )
                result.tokens = tokens
            except TooLongError as e:
                add(text_field, f"too long even after truncation: {e}")
            except TemplateError as e:
                add(text_field, f"cannot tokenize: {e}")
            if result.problems:
                result.example = None
        return result

    def _check_image(self, ref) -> None:
        """Decode once per distinct file within a run (datasets often reuse an image)."""
        if ref.path is None:
            load_image(ref, self.image_limits)
            return
        status = self._image_status.get(ref.path)
        if status is None:
            try:
                load_image(ref, self.image_limits)
                status = ""
            except ImageLoadError as e:
                status = str(e)
            self._image_status[ref.path] = status
            if len(self._image_status) > self.image_cache_size:
                self._image_status.popitem(last=False)
        if status:
            raise ImageLoadError(status)


def iter_problems(
    source: RecordSource, checker: RecordChecker, *, per_record: bool = True
) -> Iterator[Problem]:
    """Problems of every record in ``source``, in file order. ``per_record``: one line per bad record (its
    problems joined); otherwise one per problem.
    """
    first_seen: dict = {}
    for raw in source:
        result = checker.check(raw, source.path, source.base_dir)
        problems = list(result.problems)
        duplicate = _duplicate_id(raw, first_seen, source.path)
        if duplicate is not None:
            problems.append(duplicate)
        if not problems:
            continue
        if per_record:
            yield merge_record_problems(problems)
        else:
            yield from problems


ID_FIELDS = ("id", "question_id")


def _duplicate_id(raw: RawRecord, first_seen: dict, path: str) -> Problem | None:
    """A record whose ``id`` (or ``question_id``) an earlier record already had (ids must be unique)."""
    if not isinstance(raw.data, Mapping):
        return None
    for name in ID_FIELDS:
        value = raw.data.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            key = (name, value)
            if key in first_seen:
                return Problem(path, raw.number, name, f"duplicate id {value!r} (first at record {first_seen[key]})")
            first_seen[key] = raw.number
            return None
    return None
