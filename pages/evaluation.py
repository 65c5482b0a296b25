import streamlit as st

st.title("Evaluation")
st.info("This page is being built.")
