"""Observation and tracing: inspect, dataset examples, tracing, figures and the HTML feature card."""
