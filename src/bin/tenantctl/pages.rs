//! Paged lists (tenants, members): the paging options every such command
//! takes, and fetching one page or, with `--all`, following the page tokens
//! to the last page.

use clap::Args;

use crate::error::CliError;

#[derive(Debug, Args)]
pub struct PageArgs {
    /// Entries per page, 1-1000 (server default 100).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    page_size: Option<i32>,
    /// Start at this page: the token a previous page printed.
    #[arg(long, default_value = "")]
    page_token: String,
    /// Follow the page tokens to the last page and show everything.
    #[arg(long)]
    all: bool,
}

/// One page, or with `--all` every page from `--page-token` on. `fetch`
/// gets a page size (0: the server's default) and a page token and returns
/// that page's entries and the next token. The answer is every entry
/// fetched and the token of the page after them (empty after the last).
pub async fn collect<T, F, Fut>(args: PageArgs, mut fetch: F) -> Result<(Vec<T>, String), CliError>
where
    F: FnMut(i32, String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), CliError>>,
{
    let mut entries = Vec::new();
    let mut token = args.page_token;
    loop {
        let (page, next) = fetch(args.page_size.unwrap_or(0), token.clone()).await?;
        entries.extend(page);
        if !args.all || next.is_empty() {
            return Ok((entries, next));
        }
        if next == token {
            return Err(CliError::Failed(
                "the server returned the same page token twice; stopping".to_owned(),
            ));
        }
        token = next;
    }
}
