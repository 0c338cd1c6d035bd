"""Scores: the lab's metrics, the challenge's exact V_rand and V_info, reports."""
