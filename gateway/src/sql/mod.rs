//! The Data API: `POST /sql`, speaking the HTTP protocol of Neon's serverless driver.

pub mod text;
