//! The agent console: static files from `web/`, embedded in the binary so
//! `cargo run` is all a newcomer needs, served with a strict CSP. The
//! console's only way to the server, the client package `clients/js/`
//! (`@livedesk/client`), is served from its one source at
//! `/livedesk-client.js`, the URL the console imports.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
#[exclude = "*.md"]
struct Assets;

/// The module of the client package, beside the console's own files.
#[derive(RustEmbed)]
#[folder = "clients/js/"]
#[include = "livedesk-client.js"]
struct ClientPackage;

/// The file name under which the client package's module is served.
const CLIENT_MODULE: &str = "livedesk-client.js";

// connect-src 'self' covers the page's own ws:/wss: origin (CSP Level 3), so
// the console can open its WebSocket and nothing else.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Register `/` and the console's files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index)).route(
        "/{file:[A-Za-z0-9_.-]+\\.(?:js|css|html|svg|png|ico)}",
        web::get().to(file),
    );
}

async fn index() -> HttpResponse {
    serve("index.html")
}

async fn file(req: HttpRequest) -> HttpResponse {
    serve(req.match_info().query("file"))
}

fn serve(name: &str) -> HttpResponse {
    let asset = if name == CLIENT_MODULE {
        ClientPackage::get(name)
    } else {
        Assets::get(name)
    };
    match asset {
        Some(content) => {
            let mime = mime_guess::from_path(name).first_or_octet_stream();
            HttpResponse::Ok()
                .content_type(mime.as_ref())
                .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .insert_header((header::REFERRER_POLICY, "no-referrer"))
                .insert_header((header::CACHE_CONTROL, "no-cache"))
                .body(content.data.into_owned())
        }
        None => HttpResponse::NotFound().json(crate::http::errors::error_body(
            "not_found",
            "There is no such file.",
            Default::default(),
        )),
    }
}
