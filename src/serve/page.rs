//! The studio page at `/` (the files of assets/web/, embedded, so `quill serve` needs nothing
//! beside it; the page sees GET /health answer and writes through this server's API) and the
//! story folder of `--stories DIR`: GET /stories lists the stories, GET/PUT /stories/{name}
//! reads and saves one, in quill's story format (`quill::story::Story`, the file `quill write
//! --story` reads and writes; a story the page saved in its older format is read into it).
//! Every save is atomic (`files::atomic_write`: temporary file, fsync,
//! rename, the previous version kept as NAME.json~), and the page saves after every token, so
//! a server killed mid-story keeps all but the token in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use quill::story::Story;

use super::api::{ApiError, HttpError};
use super::routes::AppState;

type St = State<Arc<AppState>>;

/// (URL path, content type, file): what the page needs in server mode. worker.js and the
/// WebAssembly are only for the in-browser engine, which `scripts/web.sh` serves.
const FILES: [(&str, &str, &str); 7] = [
    ("/", "text/html; charset=utf-8", include_str!("../../assets/web/index.html")),
    ("/index.html", "text/html; charset=utf-8", include_str!("../../assets/web/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../../assets/web/app.js")),
    ("/context.js", "text/javascript; charset=utf-8", include_str!("../../assets/web/context.js")),
    // app.js imports it (the in-browser engine's loading panel), so it must resolve here too.
    ("/loader.js", "text/javascript; charset=utf-8", include_str!("../../assets/web/loader.js")),
    // app.js imports it too (the fine-tune panel, hidden in server mode).
    ("/finetune.js", "text/javascript; charset=utf-8", include_str!("../../assets/web/finetune.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../../assets/web/style.css")),
];

/// The page's files (no API key needed: they hold nothing but the page).
pub fn files() -> Router<Arc<AppState>> {
    FILES.iter().fold(Router::new(), |r, &(path, kind, body)| r.route(path, get(move || async move { ([(header::CONTENT_TYPE, kind)], body) })))
}

/// The story routes (behind the API key, when the server has one).
pub fn stories() -> Router<Arc<AppState>> {
    Router::new().route("/stories", get(list)).route("/stories/{name}", get(read).put(save))
}

/// Longest story name; names are also limited to letters, digits, space, `-`, `_` and `.`
/// (not first), so a name is one file inside the folder and never a path.
const MAX_NAME: usize = 64;

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(ok_char) || name.starts_with('.') || name.starts_with(' ') {
        return Err(ApiError::field(
            "name",
            format!("story name {name:?}: 1 to {MAX_NAME} letters, digits, spaces, '-', '_' or '.', not starting with '.' or a space"),
        ));
    }
    Ok(())
}

fn folder(st: &AppState) -> Result<&Path, ApiError> {
    st.stories.as_deref().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND.as_u16(), "this server keeps no stories: start it with --stories DIR").code("no_story_folder"))
}

fn story_path(st: &AppState, name: &str) -> Result<PathBuf, ApiError> {
    check_name(name)?;
    Ok(folder(st)?.join(format!("{name}.json")))
}

async fn list(State(st): St) -> Result<Json<Value>, HttpError> {
    let dir = folder(&st)?;
    let entries = std::fs::read_dir(dir).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR.as_u16(), format!("{}: {e}", dir.display())))?;
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_string)).filter(|n| check_name(n).is_ok()).collect();
    names.sort();
    Ok(Json(json!({"stories": names})))
}

async fn read(State(st): St, UrlPath(name): UrlPath<String>) -> Result<Response, HttpError> {
    let path = story_path(&st, &name)?;
    let internal = |e: quill::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR.as_u16(), e.to_string());
    match std::fs::read(&path) {
        Ok(bytes) => {
            // As a Story: a file of the page's older format comes back in this one.
            let file = path.display().to_string();
            let story = Story::from_bytes(&file, &bytes).map_err(internal)?;
            Ok(([(header::CONTENT_TYPE, "application/json")], story.to_bytes(&file).map_err(internal)?).into_response())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND.as_u16(), format!("no story {name:?}")).code("not_found").into()),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR.as_u16(), format!("{}: {e}", path.display())).into()),
    }
}

/// Saves one at a time: `atomic_write`'s temporary file is named after the process.
static SAVING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn save(State(st): St, UrlPath(name): UrlPath<String>, body: Bytes) -> Result<Json<Value>, HttpError> {
    let path = story_path(&st, &name)?;
    let bad = |e: quill::Error| ApiError::new(StatusCode::BAD_REQUEST.as_u16(), e.to_string());
    let story = Story::from_bytes(&format!("story {name}.json"), &body).map_err(bad)?;
    let body = story.to_bytes(&format!("{name}.json")).map_err(bad)?;
    let _one = SAVING.lock().await;
    let bytes = body.len();
    tokio::task::spawn_blocking(move || quill::files::atomic_write(&path, &body, true))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR.as_u16(), format!("saving: {e}")))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR.as_u16(), e.to_string()))?;
    Ok(Json(json!({"saved": name, "bytes": bytes})))
}

#[cfg(test)]
mod tests {
    use super::{check_name, FILES};

    #[test]
    fn every_module_the_page_imports_is_served() {
        // A module the server does not have stops the whole page (app.js never runs).
        for &(path, _, body) in FILES.iter().filter(|f| f.0.ends_with(".js")) {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let Some(name) = line.split("from './").nth(1).and_then(|r| r.split('\'').next()) else { continue };
                assert!(FILES.iter().any(|f| f.0 == format!("/{name}")), "{path} imports ./{name}, which `quill serve` does not serve (src/serve/page.rs FILES)");
            }
        }
    }

    #[test]
    fn story_names_stay_inside_the_folder() {
        for good in ["my story", "chapter-1", "a_b.c", "X"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../etc", "a/b", ".hidden", " lead", "a\\b", "ü", &"x".repeat(65), "a\0b"] {
            let e = check_name(bad).unwrap_err();
            assert!(e.message.contains("story name"), "{bad}: {}", e.message);
        }
    }
}
