"""The paper's study: grid -> results table -> report."""
