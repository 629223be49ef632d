"""The ``generate`` settings a model is asked with, checked before it loads: numbers that are numbers, switches that are
truth values, names that are Hugging Face's settings (with the nearest one for a typo), and a call's own settings over a
model's (:class:`mmcaption.tasks.Tasks`)."""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from mmcaption.errors import ConfigError
from mmcaption.model import MultimodalCausalLM

DEFAULT_GENERATION = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False}

# the generate() settings checked before generation, by kind (a request's JSON gives "false" and "5" as text: "false"
# turned sampling on, and "5" failed inside transformers, a TypeError a service could not tell from its own)
_WHOLE = ("max_new_tokens", "min_new_tokens", "num_beams", "num_return_sequences", "max_length", "min_length", "top_k",
          "no_repeat_ngram_size", "num_beam_groups")
_NUMBERS = ("temperature", "top_p", "repetition_penalty", "length_penalty", "typical_p", "diversity_penalty", "min_p",
            "epsilon_cutoff", "eta_cutoff", "max_time", *_WHOLE)
_SWITCHES = ("do_sample", "renormalize_logits", "remove_invalid_values", "use_cache")
CHECKED_SETTINGS = (*_NUMBERS, *_SWITCHES)
# what the task methods set themselves
_TASKS_OWN = ("input_ids", "attention_mask", "pixel_values", "image_embeds", "image_mask", "inputs")


def check_generation(settings: dict[str, Any], where: str = "generation", asked: Iterable[str] | None = None) -> None:
    """Refuse ``generate`` settings that cannot work, naming them, before a model loads (transformers or its
    logits processors would refuse them at the first ``generate``, after the model has loaded). Unset
    (``None``) settings are transformers' defaults. A sampling setting without sampling is warned of, where
    ``asked`` (all when None) names it: a call's own settings checked over the model's (a greedy call of a model that samples)."""
    given = {key: plain(value) for key, value in {**DEFAULT_GENERATION, **settings}.items() if value is not None}
    if unknown := _unknown(settings):  # GenerationConfig keeps any name: a typo was kept, saved and exported, and the
        raise ConfigError(f"{where}: {unknown}")  # setting meant never applied
    number = {key: value for key, value in given.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    problems = [f"{name} {given[name]!r} is not a number" for name in _NUMBERS
                if name in given and name not in number]
    problems += [f"{name} {given[name]!r} is not true or false" for name in _SWITCHES
                 if name in given and not isinstance(given[name], bool)]
    problems += [f"{name} {number[name]} must be 1 or more" for name in ("max_new_tokens", "num_beams", "num_return_sequences")
                 if name in number and number[name] < 1]
    problems += [f"{name} {number[name]!r} must be a whole number" for name in _WHOLE
                 if name in number and not (math.isfinite(number[name]) and number[name] == int(number[name]))]
    if "max_time" in number and not number["max_time"] > 0:  # -1 was taken: one token, then the time was up
        problems.append(f"max_time {number['max_time']} must be above 0 (seconds)")
    if "min_new_tokens" in number and number["min_new_tokens"] > number.get("max_new_tokens", float("inf")):
        problems.append(f"min_new_tokens {number['min_new_tokens']} is above max_new_tokens {number['max_new_tokens']}")
    if given.get("do_sample") and number.get("temperature", 1.0) <= 0:
        problems.append(f"temperature {number['temperature']} must be above 0 when sampling")
    if not 0 <= number.get("top_p", 1.0) <= 1:  # (with or without sampling: a model's own may sample)
        problems.append(f"top_p {number['top_p']} must be between 0 and 1")
    if not problems:
        try:
            GenerationConfig(**{k: v for k, v in given.items() if given.get("do_sample") or k not in _SAMPLING})
        except (ValueError, TypeError) as error:  # what else transformers refuses
            problems.append(str(error))
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}")
    if given.get("do_sample"):
        return
    # a temperature without sampling changes nothing: transformers said only "flags are not valid and may be ignored"
    defaults = GenerationConfig._get_default_generation_params()
    unused = tuple(f"{k} {given[k]}" for k in sorted(_SAMPLING if asked is None else _SAMPLING & set(asked))
                   if k in given and given[k] != defaults.get(k))
    if unused and unused not in _SAID:  # once a process (the task layer is made per batch, and predict checks its
        _SAID.add(unused)  # settings as the model is made and as it generates)
        warnings.warn(f"{where}: {', '.join(unused)} {'takes' if len(unused) == 1 else 'take'} effect only when sampling, "
                      "and do_sample is not true: generation is greedy (or beam search) without it. Give do_sample true "
                      "with it to sample", UserWarning, stacklevel=3)


def check_run_generation(settings: dict[str, Any], where: str = "model.generation") -> None:
    """:func:`check_generation` of the settings validation, test and ``predict`` generate with: one text per image or
    question (each is scored and written against its own row: several were matched with the next rows' references);
    both length limits given are said (``max_new_tokens`` wins over ``max_length``, which transformers says in passing)."""
    check_generation(settings, where)
    given = {key: plain(value) for key, value in settings.items() if value is not None}
    if (given.get("num_return_sequences") or 1) > 1:
        raise ConfigError(f"{where}: num_return_sequences {given['num_return_sequences']}: validation, test and predict "
                          "score and write one text per image or question; the Python API gives several "
                          "(Captioner.caption(image, num_return_sequences=n))")
    if "max_length" in given and "max_new_tokens" in given:  # warned, not refused: a checkpoint's settings stay loadable
        warnings.warn(f"{where}: max_length {given['max_length']} (the prompt's tokens and the new ones) and max_new_tokens "
                      f"{given['max_new_tokens']} (the new ones) both limit the text: max_new_tokens {given['max_new_tokens']} is "
                      "the limit (--model.generation.max_new_tokens null makes it max_length)", UserWarning, stacklevel=2)


# a language model's generation_config.json settings that say how generate returns or stores, not what it makes
_NOT_MAKING = {"transformers_version", "_from_model_config", "pad_token_id", "bos_token_id", "eos_token_id", "max_length",
               "decoder_start_token_id", "use_cache", "cache_implementation", "cache_config", "return_dict_in_generate",
               "output_scores", "output_logits", "output_attentions", "output_hidden_states"}


_SAMPLING = {"temperature", "top_k", "top_p", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff", "top_h"}


def explicit_settings(generation: GenerationConfig, language_model: GenerationConfig | None, call: dict[str, Any] | None = None,
                      option: str | None = None) -> GenerationConfig:
    """``generation`` with every setting it leaves unset at transformers' own default: ``generate`` fills an unset setting
    from the language model's ``generation_config.json`` first (a ``repetition_penalty`` 1.3 there changed captions while
    results.json said greedy). A setting of that file that has no neutral default (``min_p``) is still applied by
    transformers: warned, with how to set it - the command line's ``option`` (``--model.generation.``), else a call's
    keyword. ``call``: the call's own settings, over ``generation``."""
    defaults = GenerationConfig._get_default_generation_params()
    settings = copy.deepcopy(generation)
    call = call or {}
    # min_length's 0 beside a min_new_tokens given made transformers warn "both ... seem to have been set", each batch
    lengths = {"max_length", *(["min_length"] if call.get("min_new_tokens", settings.min_new_tokens) is not None else [])}
    settings.update(**{key: value for key, value in defaults.items() if key not in lengths and value is not None
                       and getattr(settings, key, None) is None})
    sampling = bool(call.get("do_sample", settings.do_sample))  # greedy or beam search: sampling settings change nothing
    theirs = {key: value for key, value in (language_model.to_diff_dict() if language_model is not None else {}).items()
              if key not in _NOT_MAKING and getattr(generation, key, None) is None and call.get(key) is None
              and (sampling or key not in _SAMPLING)}
    left = {key: value for key, value in theirs.items() if key not in defaults or defaults[key] is None}
    ignored = {key: value for key, value in theirs.items() if key not in left and value != defaults[key]}
    given = (", ".join(f"{option}{k} {v}" for k, v in ignored.items()) if option else
             ", ".join(f"{k}={v!r}" for k, v in ignored.items()) + " (a setting of the call, or of the export's mmcaption.json "
             "'generation')")
    said = []
    if ignored:
        said.append("the language model's generation_config.json sets " + ", ".join(f"{k} {v}" for k, v in ignored.items())
                    + f": not used, generation follows {'--model.generation' if option else 'the settings given'} "
                    f"(transformers' defaults where unset); give {given} to use them")
    if left:
        said.append("the language model's generation_config.json sets " + ", ".join(f"{k} {v}" for k, v in left.items())
                    + ": applied by transformers' generate although the settings given do not set it"
                    + (" (results.json does not record it)" if option else ""))
    for message in said:
        if message not in _SAID:  # once a process: the task layer is made again for every validation batch
            _SAID.add(message)
            warnings.warn(message, UserWarning, stacklevel=4)
    return settings


_SAID: set[str | tuple[str, ...]] = set()


def plain(value: Any) -> Any:
    """A NumPy or torch number or truth value as Python's (``np.int64(5)`` -> ``5``, ``np.bool_(False)`` -> ``False``); anything
    else as it is."""
    if isinstance(value, numbers.Number | np.bool_) and not isinstance(value, bool | int | float) and hasattr(value, "item"):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:  # torch.tensor(False), a 0-d number
        return value.item()
    return value


# the Python API's own settings beside generate's, offered for a name misspelt (Captioner.caption(batchsize=2))
_API_OWN = ("batch_size", "skip_unreadable", "errors")
# generate() options that change what it returns: the task layer returns texts
_RETURN_OPTIONS = ("return_dict_in_generate", "output_scores", "output_logits", "output_attentions", "output_hidden_states")


def call_settings(generation: GenerationConfig, generate_kwargs: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """A call's own ``generate`` settings as :meth:`Tasks.generate` passes them on: a ``generation_config``
    of its own is read as the settings it changes, NumPy numbers become Python's, ``max_length`` replaces
    the model's ``max_new_tokens`` (which transformers would let win), ``stop_strings`` get the tokenizer
    they need, a setting given as ``None`` is the model's own; options that would return scores instead of texts are
    refused."""
    own = generate_kwargs.pop("generation_config", None)
    if own is not None and not isinstance(own, GenerationConfig):
        raise ConfigError(f"generation_config is a transformers GenerationConfig, not {type(own).__name__}")
    changed = {key: value for key, value in (own.to_diff_dict() if own is not None else {}).items() if key != "transformers_version"}
    given = {key: value for key, value in generate_kwargs.items() if value is not None}  # None: the model's own (a
    settings = {key: plain(value) for key, value in {**changed, **given}.items()}  # service's optional field, passed on)
    unknown = [key for key in settings if key not in _known_settings()]
    if unknown:  # transformers' "model_kwargs are not used", or a TypeError for one the task methods set
        names = [*_known_settings(), *_API_OWN]  # batchsize=2 to caption: batch_size, the method's own
        near = [f" (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(key, names, n=2))
                else "" for key in unknown]
        raise ConfigError("; ".join(f"{key}: set by the task methods themselves" if key in _TASKS_OWN else
                                    f"{key} is no setting of Hugging Face's generate{hint}" for key, hint in zip(unknown, near)))
    returns = [key for key in _RETURN_OPTIONS if settings.get(key)]
    if returns:
        raise ConfigError(f"{', '.join(returns)}: the task methods return texts; for scores use option_scores, or call "
                          "the model's own generate (captioner.model.generate)")
    for key in _WHOLE:  # num_beams=2.0 (a JSON number): torch and transformers take whole numbers only
        if isinstance(settings.get(key), float) and settings[key].is_integer():
            settings[key] = int(settings[key])
    if settings.get("max_length") is not None and "max_new_tokens" not in settings and generation.max_new_tokens is not None:
        settings["max_new_tokens"] = None  # max_length counts the prompt's tokens too, as in transformers
    if settings.get("stop_strings"):
        settings.setdefault("tokenizer", tokenizer)
    return settings


def saved_generation(settings: dict[str, Any], source: str) -> dict[str, Any]:
    """A checkpoint's or a saved model's ``generate`` settings without the names that are none of Hugging Face's (a
    typo an earlier release kept), said once naming ``source``: refusing them refused the model they came with."""
    if unknown := _unknown(settings):
        warnings.warn(f"{source}: its generation settings name what Hugging Face's generate has no setting for, left out: "
                      f"{unknown}", stacklevel=2)
    return {key: value for key, value in settings.items() if is_setting(key)}


def is_setting(name: str) -> bool:
    """Whether ``name`` is one of Hugging Face's ``generate`` settings (a GenerationConfig attribute)."""
    return name in _config_settings()


def _unknown(settings: dict[str, Any]) -> str:
    """The names in ``settings`` that are no GenerationConfig setting, each with its nearest ones ('' if none);
    a name set to ``None`` (``null`` in a config, to clear a typo a checkpoint carries) is unset, not unknown."""
    return "; ".join(f"{key} is no setting of Hugging Face's generate" + (
        f" (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(key, _config_settings(), n=2)) else "")
        for key, value in settings.items() if key not in _config_settings() and value is not None)


@functools.cache
def _config_settings() -> frozenset[str]:
    """The settings a GenerationConfig has (what a config file or a saved model's settings may name)."""
    return frozenset(GenerationConfig().to_dict()) - {"transformers_version"}


@functools.cache
def _known_settings() -> frozenset[str]:
    """What a task method's ``**generate_kwargs`` may set: GenerationConfig's settings and generate()'s own
    arguments (a streamer, stopping criteria, ...), but what the task methods set themselves."""
    from transformers.generation.utils import GenerationMixin

    own = set(inspect.signature(GenerationMixin.generate).parameters) | set(inspect.signature(MultimodalCausalLM.generate).parameters)
    # what generate() takes through its **kwargs: assisted decoding's tokenizers, a hub generation method's code
    passed = {"tokenizer", "assistant_tokenizer", "trust_remote_code"}
    return frozenset((set(GenerationConfig().to_dict()) | own | passed) - {"self", "kwargs", *_TASKS_OWN})
