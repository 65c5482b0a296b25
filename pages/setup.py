import streamlit as st

st.title("Setup")
st.info("This page is being built.")
