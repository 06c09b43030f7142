"""The dashboard's static files (index.html, dashboard.js, dashboard.css); a package so they ship as package data."""
