"""Tests of the pages through Streamlit's AppTest."""
