"""Loads the JSONL files beside this file as datasets (the tasks' ``custom_dataset``): lm-eval reads
them from disk, never from the hub."""

import json
import os

import datasets


def _load(name: str) -> datasets.DatasetDict:
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def capitals(**kwargs) -> datasets.DatasetDict:
  return _load("capitals.jsonl")


def arithmetic(**kwargs) -> datasets.DatasetDict:
  return _load("arithmetic.jsonl")


def documents(**kwargs) -> datasets.DatasetDict:
  return _load("documents.jsonl")
