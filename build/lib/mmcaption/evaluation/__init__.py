"""Evaluation: caption metrics (the COCO caption evaluation code) and multiple-choice scoring."""
