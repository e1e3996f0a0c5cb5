// Shared by the review and blinded pages: requests go out one after another in key order, so fast typing never
// reorders decisions; body[data-pending] counts what is still in flight (the browser tests wait on it).
"use strict";
function serialQueue(errorElementId) {
  let queue = Promise.resolve();
  let pending = 0;
  const show = () => { document.body.dataset.pending = String(pending); };
  return function enqueue(job) {
    pending += 1;
    show();
    queue = queue.then(job)
      .catch(err => { document.getElementById(errorElementId).textContent = "error: " + err.message; })
      .finally(() => { pending -= 1; show(); });
  };
}
